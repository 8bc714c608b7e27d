"""nopeek-tf: NoPeek split learning in TensorFlow/Keras.

The layers, from the bottom (each imports only those below it; ``lint-imports`` checks the contract in
``pyproject.toml``; docs/library.md says which layer a change belongs in):

1. ``nopeek_tf.files``, ``nopeek_tf.runtime``: atomic writes, script start-up (no TensorFlow).
2. ``nopeek_tf.device``: the device contract (no TensorFlow): ``manifest``, ``bound``, ``noise``, ``litert``.
3. ``nopeek_tf.config``: every setting once (no TensorFlow): ``TrainConfig`` and its parts (``Defence``, ...).
4. ``nopeek_tf.core``: the model: ``dcor`` (exact distance correlation), ``layers``, ``architectures``,
   ``models`` (split models), ``split`` (your Keras model at a named layer: ``split_model``, ``list_cuts``).
5. ``nopeek_tf.attacks`` (``run_attacks``) and ``nopeek_tf.model_dir`` (a run's files).
6. ``nopeek_tf.training``: ``train_and_evaluate(config, model_dir)``; ``runner``, ``networks``, ``data``,
   ``loop``, ``distribute``.
7. ``nopeek_tf.split_learning``: split training over gRPC (``protocol``, ``server``, ``client``).
8. ``nopeek_tf.experiments``: leakage evaluation of a model dir, sweeps, frontiers, plots.

Importing this package stays light (no TensorFlow), so that device-side code can use its TensorFlow-free
parts. Shortcuts, imported on first use: ``nopeek_tf.split_model``, ``nopeek_tf.list_cuts``,
``nopeek_tf.train_and_evaluate``, ``nopeek_tf.TrainConfig``, ``nopeek_tf.Defence``.

Earlier module paths (``nopeek_tf.models``, ``nopeek_tf.privacy.evaluation``, ...) still import, as the same
module objects, with a DeprecationWarning naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# Earlier module path -> where it lives now.
MOVED = {
    "dcor": "core.dcor", "models": "core.models",
    "data": "training.data", "loop": "training.loop", "distribute": "training.distribute",
    "evaluation": "experiments.evaluation", "sweep": "experiments.sweep", "frontier": "experiments.frontier",
    "plots": "experiments.plots", "leakage": "experiments.leakage",
    "manifest": "device.manifest", "litert": "device.litert",
    "privacy.attacks": "attacks.reconstruction", "privacy.evaluation": "experiments.evaluation",
    "privacy.sweep": "experiments.sweep", "privacy.frontier": "experiments.frontier",
    "privacy.plots": "experiments.plots", "privacy.leakage": "experiments.leakage",
}
_OLD_PACKAGES = {"privacy": "nopeek_tf.attacks and nopeek_tf.experiments"}
_SHORTCUTS = {"split_model": "core.split", "list_cuts": "core.split", "train_and_evaluate": "training",
              "TrainConfig": "config", "Defence": "config"}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: import {new}", DeprecationWarning, stacklevel=3)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``nopeek_tf.<old path>`` as the module that now holds it (the same object), with a warning."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == __name__ and (name in MOVED or name in _OLD_PACKAGES):
            return importlib.util.spec_from_loader(fullname, self, is_package=name in _OLD_PACKAGES)
        return None

    def create_module(self, spec):
        name = spec.name.partition(".")[2]
        if name in _OLD_PACKAGES:
            _warn(spec.name, _OLD_PACKAGES[name])
            return types.ModuleType(spec.name, f"Deprecated: {_OLD_PACKAGES[name]}.")
        new = f"{__name__}.{MOVED[name]}"
        _warn(spec.name, new)
        module = importlib.import_module(new)
        self._original_spec = module.__spec__
        return module

    def exec_module(self, module):
        if module.__name__ != module.__spec__.name:  # a moved module: the import system set the alias's spec on it
            module.__spec__ = self._original_spec


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before the path finder, which would load a second copy


def __getattr__(name: str):
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(f"{__name__}.{_SHORTCUTS[name]}"), name)
    if name in MOVED or name in _OLD_PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
