"""The settings of a leakage evaluation: how hard each attack tries, which images it uses."""

from __future__ import annotations

import dataclasses

from nopeek_tf.config.settings import ConfigError, Settings, check, setting


@dataclasses.dataclass(frozen=True)
class AttackBudget(Settings):
    """How hard each reconstruction attack tries (stated with every result)."""

    decoder_epochs: int = setting(10, "Most epochs of each decoder attack (stops early when converged).", minimum=1)
    decoder_batch_size: int = setting(64, "Batch size of the decoder attacks.", minimum=1)
    decoder_learning_rate: float = setting(1e-3, "Adam learning rate of the decoder attacks.", above=0)
    decoder_width: int = setting(32, "Filters of the decoder's convolutions.", minimum=1)
    leaked_fraction: float = setting(0.9, "Share of the test images whose (image, activation) pairs leak; the "
                                     "attacks are scored on the rest.", above=0)
    inversion_images: int = setting(32, "Scored images the inversion attack reconstructs.", minimum=1)
    inversion_steps: int = setting(500, "Adam steps of the inversion attack.", minimum=1)
    inversion_learning_rate: float = setting(0.05, "Adam learning rate of the inversion attack.", above=0)
    inversion_tv_weight: float = setting(0.02, "Weight of the inversion's total-variation prior.", minimum=0)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        check(self)
        if self.leaked_fraction >= 1:
            raise ConfigError(f"--leaked_fraction must be between 0 and 1, got {self.leaked_fraction}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Settings):
    """Which images a leakage evaluation uses, and how the reconstructions are judged."""

    train_images: int = setting(0, "Training images the public-client attackers run the client on (0: the whole "
                                "training split, as anyone holding the public client can).", minimum=0)
    test_images: int = setting(2000, "Test images (leaked share + scored share).", minimum=1)
    recognizer_epochs: int = setting(5, "Epochs of the separate classifier that judges reconstructions.",
                                     minimum=1)
    attack_seed: int = setting(0, "Splits the test images into leaked and scored ones.")


# The default budget gives the public-client attackers the whole training split (data matters more than
# decoder width or epochs: docs/leakage.md, "What a full evaluation costs") and fits in an hour for one
# Fashion-MNIST model on 2 cores. The quick budget, for comparing many defences in one sweep (--quick),
# gives them 5,000 images and underestimates what the whole split reconstructs (by about 0.04 SSIM on the
# recommended Fashion-MNIST client of the last release), so headline figures use the defaults.
QUICK_BUDGET = AttackBudget(decoder_width=32, decoder_epochs=10, inversion_steps=300, inversion_images=32)
QUICK_EVALUATION = EvaluationConfig(train_images=5000, test_images=2000, recognizer_epochs=3)
