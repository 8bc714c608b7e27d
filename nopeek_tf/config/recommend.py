"""The limits of a recommendation (``python -m train.recommend``; :mod:`nopeek_tf.experiments.recommend`)."""

from __future__ import annotations

import dataclasses

from nopeek_tf.config.settings import ConfigError, Settings, check, setting


@dataclasses.dataclass(frozen=True)
class RecommendSettings(Settings):
    """The limits of a recommendation (``python -m train.recommend``; the model and data are a TrainConfig)."""

    max_device_flops: float = setting(1.0, "The share of the model's FLOPs the device may run (0-1]: only cuts "
                                      "whose client half takes at most this share are tried.", above=0)
    max_accuracy_drop: float = setting(0.02, "The test accuracy the defence may cost against the undefended run "
                                       "(0.02: 2 points).", minimum=0)
    budget_minutes: float = setting(30.0, "Time for the whole recommendation: the undefended run, the search and "
                                    "training the choice (a candidate started in time may finish after it).",
                                    above=0)
    trial_epochs: int = setting(0, "Epochs of the undefended run and of each candidate (0: a third of --epochs, "
                                "at least 1).", minimum=0)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        check(self)
        if self.max_device_flops > 1:
            raise ConfigError(f"--max_device_flops is a share of the model's FLOPs: at most 1, got "
                              f"{self.max_device_flops:g}")
