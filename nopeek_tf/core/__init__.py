"""The NoPeek model: exact distance correlation, the NoPeek layer and split models, splitting your own model.

* ``nopeek_tf.core.dcor``: exact, differentiable distance correlation; mean dCor over batches.
* ``nopeek_tf.core.models``: the NoPeek Keras layer, the noise baseline, the alpha schedule, the built-in
  architectures and their split models.
* ``nopeek_tf.core.split``: your own Keras model split at a named layer (``split_model``, ``list_cuts``).

Each imports TensorFlow.
"""
