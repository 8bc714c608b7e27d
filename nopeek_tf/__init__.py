"""nopeek-tf: NoPeek split learning in TensorFlow/Keras.

The parts a user meets (this package import stays light, with no TensorFlow, so
that device-side code can use its TensorFlow-free parts):

* Splitting a model, ``nopeek_tf.core``: ``split`` (your Keras model at a named layer:
  ``split_model``, ``list_cuts``), ``models`` (the NoPeek layer, built-in architectures),
  ``dcor`` (exact, differentiable distance correlation).
* Training, ``nopeek_tf.training``: ``train_and_evaluate(config, model_dir)``; ``data``
  (offline datasets, your folder, TFDS names, a ``tf.data.Dataset``), ``loop`` (one loop
  for every ``tf.distribute`` strategy), ``distribute``.
* Split training over gRPC (each client keeps its images), ``nopeek_tf.split_learning``: ``protocol``
  (no TensorFlow), ``server``, ``client``.
* Privacy evaluation, ``nopeek_tf.privacy``: ``attacks`` (``run_attacks``), ``evaluation``
  (a model dir's ``leakage.json``), ``sweep``, ``frontier``, ``plots``.
* The device contract, ``nopeek_tf.device`` (no TensorFlow): ``manifest``, ``litert``.
* Shared, no TensorFlow: ``config`` (every setting once: flags, checks, config.json),
  ``model_dir`` (a run's files), ``files`` (atomic writes), ``runtime`` (script start-up).

Shortcuts, imported on first use: ``nopeek_tf.split_model``, ``nopeek_tf.list_cuts``,
``nopeek_tf.train_and_evaluate``, ``nopeek_tf.TrainConfig``.

The modules' earlier flat paths (``nopeek_tf.models``, ``nopeek_tf.attacks``,
``nopeek_tf.manifest``, ...) still import: they are the same module objects.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Earlier flat module -> where it lives now.
_MOVED = {
    "dcor": "core.dcor", "models": "core.models",
    "data": "training.data", "loop": "training.loop", "distribute": "training.distribute",
    "attacks": "privacy.attacks", "evaluation": "privacy.evaluation", "sweep": "privacy.sweep",
    "frontier": "privacy.frontier", "plots": "privacy.plots", "leakage": "privacy.leakage",
    "manifest": "device.manifest", "litert": "device.litert",
}
_SHORTCUTS = {"split_model": "core.split", "list_cuts": "core.split", "train_and_evaluate": "training",
              "TrainConfig": "config"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``nopeek_tf.<old name>`` as the module that now holds it (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}")
        self._original_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._original_spec  # the import system set the alias's spec on the shared module


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(f"{__name__}.{_SHORTCUTS[name]}"), name)
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
