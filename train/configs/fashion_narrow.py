r"""Fashion-MNIST at the dense cut with a 4x narrower client (8/8/16 filters, 32 units sent), undefended.

  python -m train.sweep --config=fashion_narrow

1 model, about 5 minutes on 2 cores (README: "Measured: Fashion-MNIST").
"""

import dataclasses

from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings
from . import _fashion


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_fashion_narrow", cuts=("dense",), alphas=(0,), gaussian_noise=(),
                          uniform_noise=()),
        train=dataclasses.replace(_fashion.TRAIN, client_width=0.25), budget=_fashion.QUICK_BUDGET,
        evaluation=_fashion.QUICK_IMAGES)
