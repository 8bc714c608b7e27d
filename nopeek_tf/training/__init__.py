"""Training a NoPeek split model end to end: ``train_and_evaluate(config, model_dir)``.

The front door: what users and the programs above call. The package's modules:

* :mod:`nopeek_tf.training.runner`: the run (:func:`resolve_config`, :func:`start_run`, :func:`train_and_evaluate`).
* :mod:`nopeek_tf.training.networks`: the network a config names, its cut, the split model it builds.
* :mod:`nopeek_tf.training.data`: offline-first ``tf.data`` pipelines, your folder of images, TFDS names.
* :mod:`nopeek_tf.training.loop`: the one training loop for every strategy, checkpoints.
* :mod:`nopeek_tf.training.distribute`: the strategy of a config, which task writes, the peer watchdog.
* :mod:`nopeek_tf.training.collapse`: a model at chance, caught (metrics.json's ``collapsed``, ``--strict``).
"""

from nopeek_tf.training.networks import build_split, cuts_table, resolve_network, valid_cuts  # noqa: F401
from nopeek_tf.training.runner import (  # noqa: F401  (the front door)
    Run, load_dataset, model_metrics, resolve_config, start_run, step_schedules,
    train_and_evaluate, warn_if_collapsed)
