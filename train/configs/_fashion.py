"""What the Fashion-MNIST sweeps share: 2 epochs at batch 128, and the quick attack budget.

The quick budget (public client on 5,000 training images, leaked pairs on
1,800 test pairs, scored on 200; decoders width 32 up to 10 epochs; inversion
on 32 images, 300 steps) is for comparing defences in one sweep; it
underestimates what an attacker with the full training split reconstructs.
"""

from nopeek_tf.config import QUICK_BUDGET, QUICK_EVALUATION, TrainConfig  # noqa: F401  (QUICK_BUDGET: the configs read it here)

# No NoPeek warm-up unless a sweep asks for one (WARM_UP): the sweeps were measured so.
TRAIN = TrainConfig(dataset="fashion_mnist", epochs=2, batch_size=128, alpha_warmup_epochs=0.0, alpha_ramp_epochs=0.0,
                    verbose=0)
QUICK_IMAGES = QUICK_EVALUATION
WARM_UP = dict(alpha_warmup_epochs=0.5, alpha_ramp_epochs=0.5)
