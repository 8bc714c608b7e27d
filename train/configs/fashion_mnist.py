r"""Fashion-MNIST: NoPeek over alpha at cuts conv2 and dense, and the noise baselines at conv2.

  python -m train.sweep --config=fashion_mnist

14 models, about 5-6 minutes each on 2 cores (README: "Measured: Fashion-MNIST").
"""

from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings
from . import _fashion


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_fashion", cuts=("conv2", "dense"), noise_cuts=("conv2",),
                          alphas=(0, 1, 3, 10), gaussian_noise=(1, 3), uniform_noise=(1, 3)),
        train=_fashion.TRAIN, budget=_fashion.QUICK_BUDGET, evaluation=_fashion.QUICK_IMAGES)
