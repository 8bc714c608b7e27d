"""Privacy evaluation: what the activations a client sends reveal.

* ``nopeek_tf.attacks``: the reconstruction attacks, ``run_attacks(AttackInput, AttackBudget)``.
* ``nopeek_tf.experiments.evaluation``: the leakage evaluation of a model dir (leakage.json and its pictures).
* ``nopeek_tf.experiments.sweep``: the privacy-utility sweep; ``nopeek_tf.experiments.frontier``: the frontier of
  attacked model dirs; ``nopeek_tf.experiments.plots``: their pictures.
* ``nopeek_tf.experiments.leakage``: deprecated (``nopeek_tf.core.dcor.mean_batch_dcor`` replaces it).

Each imports TensorFlow (but ``frontier``).
"""
