"""The NoPeek model: exact distance correlation, the NoPeek layer and split models, splitting your own model.

* ``nopeek_tf.core.dcor``: exact, differentiable distance correlation; mean dCor over batches.
* ``nopeek_tf.core.layers``: the NoPeek Keras layer (dCor via ``add_loss``), the device noise, the noise
  baseline, the alpha schedule.
* ``nopeek_tf.core.architectures``: the built-in architectures, cut after any of their blocks.
* ``nopeek_tf.core.models``: split models of a built-in architecture (``build_split_model``), the halves of a
  saved model, FLOPs. Its layers and architectures are importable from here too.
* ``nopeek_tf.core.split``: your own Keras model split at a named layer (``split_model``, ``list_cuts``).

The builders take the defence whole, a :class:`nopeek_tf.config.Defence` (or its fields by name). Each
imports TensorFlow.
"""
