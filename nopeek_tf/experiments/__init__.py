"""Experiments on trained model dirs, the top layer: what the activations a client sends reveal, and how
defences compare.

* ``nopeek_tf.experiments.evaluation``: the leakage evaluation of a model dir (leakage.json and its pictures),
  the attacks of :mod:`nopeek_tf.attacks` run on its Keras or exported client.
* ``nopeek_tf.experiments.sweep``: the privacy-utility sweep; ``nopeek_tf.experiments.frontier``: the frontier
  of attacked model dirs; ``nopeek_tf.experiments.plots``: their pictures.
* ``nopeek_tf.experiments.leakage``: deprecated (``nopeek_tf.core.dcor.mean_batch_dcor`` replaces it).

Each imports TensorFlow (but ``frontier`` and ``plots``).
"""
