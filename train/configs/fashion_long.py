r"""Fashion-MNIST at the dense cut, 5 epochs: alphas 1 and 3 with a warm-up of 1 + 1 epochs.

  python -m train.sweep --config=fashion_long

Draws the 2-epoch curves of fashion_mnist and fashion_dense_warmup too (run
them first). 3 models, about 10 minutes each on 2 cores (README: "Measured:
Fashion-MNIST").
"""

import dataclasses

from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings
from . import _fashion


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_fashion_long", cuts=("dense",), alphas=(0, 1, 3),
                          gaussian_noise=(), uniform_noise=(),
                          plot_with=("runs/sweep_fashion", "runs/sweep_fashion_push")),
        train=dataclasses.replace(_fashion.TRAIN, epochs=5, alpha_warmup_epochs=1, alpha_ramp_epochs=1),
        budget=_fashion.QUICK_BUDGET, evaluation=_fashion.QUICK_IMAGES)
