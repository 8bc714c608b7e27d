"""The attacks on what a client sends: one entry point, :func:`run_attacks`, over typed inputs and results.

* :mod:`nopeek_tf.attacks.reconstruction`: the reconstruction attacks (leaked pairs, public-client decoders,
  label-aware decoder, gradient inversion), their scores and the label-only floor; the in-loop decoder of
  attacker-aware training (:func:`build_decoder`) and the per-epoch quick attack (:class:`LeakageCallback`).

Below training in the layers: training builds its in-loop attacker from here; the experiments
(:mod:`nopeek_tf.experiments`) run these attacks on a trained model dir. Imports TensorFlow.
"""

from nopeek_tf.attacks.reconstruction import (  # noqa: F401  (the front door)
    ATTACKS, DECODER_FAMILIES, AttackBudget, AttackInput, AttackResult,
    LeakageCallback, LeakageReport, build_decoder, class_means,
    image_metrics, invert, quick_attack_ssim, run_attacks,
    total_variation, train_decoder)
