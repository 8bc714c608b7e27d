"""nopeek-tf: NoPeek split learning in TensorFlow/Keras.

Modules (import what you need; this package import stays light, with no
TensorFlow, so that device-side code can use its TensorFlow-free parts):

* ``nopeek_tf.dcor``: exact, differentiable distance correlation.
* ``nopeek_tf.models``: the NoPeek Keras layer and split-model builder.
* ``nopeek_tf.data``: offline-first ``tf.data`` pipelines.
* ``nopeek_tf.leakage``: leakage metrics.
* ``nopeek_tf.runtime``: quiet TensorFlow start-up for scripts.
"""
