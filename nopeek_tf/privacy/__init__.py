"""Privacy evaluation: what the activations a client sends reveal.

* ``nopeek_tf.privacy.attacks``: the reconstruction attacks, ``run_attacks(AttackInput, AttackBudget)``.
* ``nopeek_tf.privacy.evaluation``: the leakage evaluation of a model dir (leakage.json and its pictures).
* ``nopeek_tf.privacy.sweep``: the privacy-utility sweep; ``nopeek_tf.privacy.frontier``: the frontier of
  attacked model dirs; ``nopeek_tf.privacy.plots``: their pictures.
* ``nopeek_tf.privacy.leakage``: deprecated (``nopeek_tf.core.dcor.mean_batch_dcor`` replaces it).

Each imports TensorFlow (but ``frontier``).
"""
