"""nopeek-tf: NoPeek split learning in TensorFlow/Keras.

Modules (import what you need; this package import stays light, with no
TensorFlow, so that device-side code can use its TensorFlow-free parts):

Without TensorFlow (the device and command-line flag parsing use these):

* ``nopeek_tf.config``: every setting once: the dataclasses from which flags, checks and config.json come.
* ``nopeek_tf.manifest``: the device/server contract that export writes and the edge client reads.
* ``nopeek_tf.litert``: LiteRT: a ``.tflite`` model, and ``ClientRunner``, the one way to run a client.
* ``nopeek_tf.files``: atomic writes of every file a run writes.
* ``nopeek_tf.model_dir``: a model dir's layout, creation, saving and loading (loading imports TensorFlow).
* ``nopeek_tf.runtime``: quiet TensorFlow start-up for scripts.

With TensorFlow:

* ``nopeek_tf.dcor``: exact, differentiable distance correlation; mean dCor over batches.
* ``nopeek_tf.models``: the NoPeek Keras layer, the noise baseline, the alpha schedule, split models.
* ``nopeek_tf.data``: offline-first ``tf.data`` pipelines.
* ``nopeek_tf.distribute``: the tf.distribute strategy of a config; which task writes files; the peer watchdog.
* ``nopeek_tf.loop``: the one training loop (custom step, checkpoints) for every strategy.
* ``nopeek_tf.training``: ``train_and_evaluate(config, model_dir)``.
* ``nopeek_tf.attacks``: the reconstruction attacks, ``run_attacks(AttackInput, AttackBudget)``.
* ``nopeek_tf.evaluation``: the leakage evaluation of a model dir (leakage.json and its pictures).
* ``nopeek_tf.sweep``: the privacy-utility sweep.
* ``nopeek_tf.plots``: image grids and the privacy-utility plot.
* ``nopeek_tf.leakage``: deprecated (``nopeek_tf.dcor.mean_batch_dcor`` replaces it).
"""
