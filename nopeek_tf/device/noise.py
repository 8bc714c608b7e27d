"""The device's noise: clip, add fresh Gaussian noise, and repeat it for a repeated image.

The bound in bits (:mod:`nopeek_tf.device.bound`) assumes the server sees each
image once. An attacker who could make the device send the same image many
times would average the noise away, so the device memoises: the same image
(by a keyed hash of its pixels, HMAC-SHA256 with a key that never leaves the
device) always sends the same noisy activations, like RAPPOR's permanent
randomized response. The noise itself comes from a generator seeded by the
operating system (``numpy.random.default_rng()``), never from a file.

With a ``state_dir`` the key and the memo persist there (``device_key``, mode
0600, and ``noise_memo/<hash>.npy``), so a restarted device repeats itself too;
without one, both live in memory for the life of the object. A new key (a new
state dir, or the key file deleted) starts a new memo: fresh draws.

No TensorFlow.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

import numpy as np

from nopeek_tf import files
from nopeek_tf.device.manifest import Noise

KEY_FILE = "device_key"
MEMO_DIR = "noise_memo"
KEY_BYTES = 32


class DeviceNoiseSource:
    """Adds the manifest's noise to a batch of activations, the same noise for the same image.

    Args:
      noise: the noise to add (gaussian, stddev, clip): the manifest's, or the device policy's
        (:func:`nopeek_tf.device.policy.enforced_noise`).
      state_dir: where the device key and the memo persist; None keeps them in memory.
      memoise: False draws fresh noise for every call (the exporter's accuracy check, not a device).
      budget: a :class:`nopeek_tf.device.policy.BitBudget` charged ``bits_per_image`` for each image not seen
        before (a repeat costs nothing: it resends the memoised values).
      bits_per_image: what one new image costs the budget.
    """

    def __init__(self, noise: Noise, state_dir: str | None = None, memoise: bool = True, budget=None,
                 bits_per_image: float = 0.0):
        if noise.kind != "gaussian":
            raise ValueError(f"unknown noise kind {noise.kind!r} (this client adds gaussian noise)")
        self.noise = noise
        self.state_dir = state_dir
        self.memoise = memoise
        self.budget, self.bits_per_image = budget, bits_per_image
        self._generator = np.random.default_rng()  # seeded by the operating system
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.key = self._load_or_create_key() if memoise else b""

    def _load_or_create_key(self) -> bytes:
        if self.state_dir is None:
            return os.urandom(KEY_BYTES)
        path = os.path.join(self.state_dir, KEY_FILE)
        if os.path.exists(path):
            with open(path, "rb") as f:
                key = f.read()
            if len(key) == KEY_BYTES:
                return key
        os.makedirs(self.state_dir, exist_ok=True)
        key = os.urandom(KEY_BYTES)
        files.write_bytes(path, key)
        os.chmod(path, 0o600)
        return key

    def image_key(self, pixels: np.ndarray) -> str:
        """The keyed hash of one image's pixels (and shape): what the memo is indexed by."""
        pixels = np.ascontiguousarray(pixels)
        message = f"{pixels.shape}:{pixels.dtype}:".encode() + pixels.tobytes()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def _memo_path(self, image_key: str) -> str | None:
        return os.path.join(self.state_dir, MEMO_DIR, f"{image_key}.npy") if self.state_dir else None

    def _recall(self, image_key: str) -> np.ndarray | None:
        if image_key in self._memo:
            return self._memo[image_key]
        path = self._memo_path(image_key)
        if path and os.path.exists(path):
            self._memo[image_key] = np.load(path)
            return self._memo[image_key]
        return None

    def _remember(self, image_key: str, noisy: np.ndarray) -> None:
        self._memo[image_key] = noisy
        path = self._memo_path(image_key)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp.npy"
            np.save(temporary, noisy)
            os.replace(temporary, path)

    def draw(self, activations: np.ndarray) -> np.ndarray:
        """clip(activations) + fresh noise, float32 (no memo)."""
        bounded = np.clip(activations.astype(np.float32), -self.noise.clip, self.noise.clip)
        return (bounded + self.noise.stddev * self._generator.standard_normal(bounded.shape)).astype(np.float32)

    def add(self, pixels: np.ndarray, activations: np.ndarray) -> np.ndarray:
        """The noisy activations the device sends for a batch: the memoised ones for an image seen before.

        Args:
          pixels: the batch's uint8 pixels [N, H, W, C] (what the memo is keyed by).
          activations: the client's float activations for them [N, ...].
        """
        if not self.memoise:
            return self.draw(activations)
        out = np.empty(activations.shape, np.float32)
        with self._lock:
            for index, image in enumerate(pixels):
                image_key = self.image_key(image)
                noisy = self._recall(image_key)
                if noisy is None:
                    if self.budget is not None:
                        self.budget.charge(self.bits_per_image)  # BudgetExhausted: nothing of the batch is sent
                    noisy = self.draw(activations[index])
                    self._remember(image_key, noisy)
                out[index] = noisy
        return out
