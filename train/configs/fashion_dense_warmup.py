r"""Fashion-MNIST at the dense cut: small alphas with a warm-up (0.5 epochs at alpha 0, a 0.5-epoch ramp).

  python -m train.sweep --config=fashion_dense_warmup

Draws the curves of the fashion_mnist sweep too (run it first). 3 models, about
5 minutes each on 2 cores (README: "Measured: Fashion-MNIST").
"""

import dataclasses

from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings
from . import _fashion


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_fashion_push", cuts=("dense",), alphas=(0, 0.3, 1),
                          gaussian_noise=(), uniform_noise=(), plot_with=("runs/sweep_fashion",)),
        train=dataclasses.replace(_fashion.TRAIN, **_fashion.WARM_UP), budget=_fashion.QUICK_BUDGET,
        evaluation=_fashion.QUICK_IMAGES)
