"""The device contract, without TensorFlow: what the exporter writes and the edge client reads.

* ``nopeek_tf.device.manifest``: ``manifest.json``, how pixels become the client's input and what it sends.
* ``nopeek_tf.device.bound``: ``bound_bits``, the most bits one request can reveal about the image.
* ``nopeek_tf.device.noise``: the noise the device adds, memoised per image by a keyed hash.
* ``nopeek_tf.device.litert``: a ``.tflite`` client on LiteRT; ``ClientRunner``, the one way to run a client.
"""
