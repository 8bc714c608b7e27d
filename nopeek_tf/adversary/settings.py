"""The attacking server's own flags (no TensorFlow: ``--help`` and the scripts' flags need none)."""

from __future__ import annotations

import dataclasses

from nopeek_tf.config import Settings, check, setting

ATTACKS = ("fsha", "substitute", "label_inference")


@dataclasses.dataclass(frozen=True)
class AttackSettings(Settings):
    """The attacking server's own flags."""

    attack: str = setting("fsha", "fsha: answer with a hijacking gradient; substitute: hand over the attacker's "
                          "encoder; label_inference: keep the gradients a U-shaped client returns.", choices=ATTACKS)
    pilot_steps: int = setting(600, "Steps training the attacker's encoder and decoder on public images before the "
                               "clients join (fsha, substitute).", minimum=0)
    attack_learning_rate: float = setting(1e-4, "Adam's learning rate of the attacker's pilot, decoder and critic.",
                                          above=0)
    gradient_penalty: float = setting(10.0, "WGAN-GP's gradient penalty weight (fsha).", minimum=0)
    public_images: int = setting(0, "Public images the attacker trains on (the test split's first N; 0: all).",
                                 minimum=0)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        check(self)
