"""The device's own privacy policy: the bound it computes itself, the noise it insists on, its budget of bits.

Whoever ships the manifest should not set the device's privacy. So the device

* computes the bound in bits from the noise it actually adds and the values its ``.tflite`` actually outputs,
  never from the manifest's privacy card, and refuses a manifest whose card disagrees with its own noise
  (:func:`check_card`: a card rewritten to claim a bound its noise does not give, or noise turned down
  under a card left as it was);
* with ``max_bits`` adds at least the noise that holds that many bits per request, whatever the manifest
  says (:func:`enforced_noise`: it may only add noise, never remove it). The bound needs values bounded
  by the device's own code: the client's output must come from a tanh or a logistic (read off the
  ``.tflite``'s operators, not the manifest), and the device clips to [-1, 1] again before the noise;
* with a budget (:class:`BitBudget`) counts the bits each new image costs and, past the budget, sends no
  new image. A repeated image (the same pixels) costs nothing: the device resends its memoised noisy
  activations, which tell the server nothing new. Near-duplicates (another photo of the same scene, a
  resized or re-encoded copy) are new images and are charged in full: the budget is what bounds what
  many such photos reveal together about what they share.

No TensorFlow.
"""

from __future__ import annotations

import json
import os
import threading

from nopeek_tf import files
from nopeek_tf.device import bound as bound_lib
from nopeek_tf.device.manifest import Manifest, Noise

DEVICE_CLIP = 1.0  # tanh's and the logistic's range: the device clips to it whatever the manifest says
BOUNDED_OUTPUT_OPS = ("TANH", "LOGISTIC")
CARD_TOLERANCE = 1e-3  # the card's bound is rounded to 4 decimals
BUDGET_FILE = "bit_budget.json"


class PolicyError(ValueError):
    """The manifest or the client cannot satisfy the device's policy; the text says why in one line."""


class BudgetExhausted(PolicyError):
    """A new image would take the device past its budget of bits: nothing was sent."""


def check_card(manifest: Manifest, values: int, wire: str) -> None:
    """Refuses a manifest whose privacy card claims another bound than its own noise gives.

    Args:
      manifest: the manifest as shipped.
      values: the numbers the client ``.tflite`` outputs per image (read off the model, not the manifest).
      wire: what the device sends them as (float32, int8).

    Raises:
      PolicyError: the card's noise, its value count or its bound differ from what the device computes.
    """
    card = manifest.privacy or {}
    if "bound_bits" not in card:
        return
    noise = manifest.noise
    stddev, clip = (noise.stddev, noise.clip) if noise else (0.0, None)
    if card.get("sent_values") not in (None, values):
        raise PolicyError(f"the manifest's privacy card is for {card['sent_values']} values; the client sends {values}")
    if abs(float(card.get("noise_stddev") or 0.0) - stddev) > 1e-9:
        raise PolicyError(f"the manifest's privacy card was made for noise {card.get('noise_stddev')}, its noise "
                          f"entry says {stddev}: refusing an altered manifest")
    own = bound_lib.bound_bits(values, card.get("bound_wire", wire), stddev, clip)
    if abs(float(card["bound_bits"]) - own) > CARD_TOLERANCE * max(1.0, own):
        raise PolicyError(f"the manifest's privacy card claims {card['bound_bits']:.2f} bits per request, but its "
                          f"noise (stddev {stddev:g}) on {values} values gives {bound_lib.bits_text(own)}: "
                          "refusing an altered manifest")


def enforced_noise(manifest_noise: Noise | None, values: int, max_bits: float | None,
                   output_op: str | None) -> Noise | None:
    """The noise the device adds: the manifest's, raised where ``max_bits`` needs more.

    Args:
      manifest_noise: the manifest's noise entry (None: none).
      values: the numbers sent per image.
      max_bits: the device's own limit per request (None: the manifest's noise as it is).
      output_op: the builtin operator that produces the client's output (from the ``.tflite``).

    Raises:
      PolicyError: ``max_bits`` with a client whose values are not bounded by its last operator.
    """
    if max_bits is None:
        return manifest_noise
    if max_bits <= 0:
        raise PolicyError(f"--max_bits must be > 0, got {max_bits:g}")
    if output_op not in BOUNDED_OUTPUT_OPS:
        raise PolicyError(f"--max_bits needs a client whose values are bounded (its output from "
                          f"{' or '.join(BOUNDED_OUTPUT_OPS)}); this one ends in {output_op or 'an unknown operator'}: "
                          "train it with --bottleneck=K --bounded")
    clip = min(DEVICE_CLIP, manifest_noise.clip) if manifest_noise else DEVICE_CLIP
    needed = bound_lib.stddev_for_bits(values, max_bits, clip)
    stddev = max(needed, manifest_noise.stddev if manifest_noise else 0.0)
    return Noise(kind="gaussian", stddev=stddev, clip=clip)


class BitBudget:
    """The bits this device may still send about new images, kept in ``state_dir`` (in memory without one).

    Args:
      limit: the budget in bits (``--budget_bits``).
      state_dir: the device's state folder (the ledger ``bit_budget.json``; shared by every model it runs).
    """

    def __init__(self, limit: float, state_dir: str | None = None):
        if limit <= 0:
            raise PolicyError(f"--budget_bits must be > 0, got {limit:g}")
        self.limit = float(limit)
        self.path = os.path.join(state_dir, BUDGET_FILE) if state_dir else None
        self.spent, self.images = 0.0, 0
        self._lock = threading.Lock()
        if self.path and os.path.exists(self.path):
            with open(self.path) as f:
                ledger = json.load(f)
            self.spent, self.images = float(ledger["spent_bits"]), int(ledger["images"])

    def charge(self, bits: float) -> None:
        """Spends ``bits`` on one new image; BudgetExhausted (nothing spent) when they do not fit."""
        with self._lock:
            if self.spent + bits > self.limit + 1e-9:
                raise BudgetExhausted(
                    f"--budget_bits: this device has sent {bound_lib.bits_text(self.spent)} of its "
                    f"{bound_lib.bits_text(self.limit)} bits ({self.images} new images); this new image would "
                    f"take {bound_lib.bits_text(bits)} more: not sent (images sent before are still answered)")
            self.spent += bits
            self.images += 1
            if self.path:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                files.write_json(self.path, {"limit_bits": self.limit, "spent_bits": self.spent,
                                             "images": self.images})
