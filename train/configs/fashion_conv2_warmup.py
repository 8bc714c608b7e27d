r"""Fashion-MNIST at the default cut conv2: alphas 3 and 10 with a warm-up (0.5 + 0.5 epochs).

  python -m train.sweep --config=fashion_conv2_warmup

Draws every 2-epoch curve (run fashion_mnist, fashion_dense_warmup and
fashion_narrow first). 3 models, about 5 minutes each on 2 cores (README:
"Measured: Fashion-MNIST").
"""

import dataclasses

from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings
from . import _fashion


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_fashion_warm", cuts=("conv2",), alphas=(0, 3, 10),
                          gaussian_noise=(), uniform_noise=(),
                          plot_with=("runs/sweep_fashion", "runs/sweep_fashion_push", "runs/sweep_fashion_narrow")),
        train=dataclasses.replace(_fashion.TRAIN, **_fashion.WARM_UP), budget=_fashion.QUICK_BUDGET,
        evaluation=_fashion.QUICK_IMAGES)
