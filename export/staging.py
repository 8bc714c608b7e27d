"""What an export works with: its settings, the images it checks and calibrates with, and the staging
folder its files are written in before they move into place."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile

import numpy as np

from nopeek_tf import config as config_lib
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import model_dir as model_dir_lib

CLIENT_DIR = "client"


SERVING_DIR = "serving"


class ExportError(ValueError):
    """The export cannot be made; the message names the flag or the problem."""


@dataclasses.dataclass(frozen=True)
class ExportConfig(config_lib.Settings):
    """Settings of one export (one field per flag)."""

    model_dir: str | None = config_lib.setting(None, "A model dir written by python -m train.train (required).")
    export_dir: str | None = config_lib.setting(None, "Output folder (default <model_dir>/export).")
    variants: tuple[str, ...] = config_lib.setting(manifest_lib.VARIANTS, "Client variants: float32, float16, "
                                                   "dynamic, int8.", choices=manifest_lib.VARIANTS)
    model_name: str | None = config_lib.setting(None, "TF Serving model name (default nopeek_<dataset>).")
    parity_images: int = config_lib.setting(1000, "Held-out test images for the parity check.", minimum=1)
    representative_images: int = config_lib.setting(200, "Training images that calibrate the int8 client.",
                                                    minimum=1)
    client_manifest: str | None = config_lib.setting(None, "For a split server's model dir (python -m "
                                                     "train.split_server): the manifest.json of the client's "
                                                     "export, which names the model, version and int8 wire the "
                                                     "server half must pair with.")
    force: bool = config_lib.setting(False, "Export a model dir whose test accuracy is at chance (metrics.json's "
                                     "collapsed), which export otherwise refuses.")

    def validate(self) -> None:
        if not self.variants:
            raise config_lib.ConfigError(f"--variants: none given; choose from {', '.join(manifest_lib.VARIANTS)}")
        if not self.model_dir:
            raise config_lib.ConfigError("--model_dir is required (a folder written by python -m train.train)")
        super().validate()
        if self.model_name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise config_lib.ConfigError(f"--model_name {self.model_name!r}: use letters, digits, '_', '-' and '.'")


@contextlib.contextmanager
def staged(export_dir: str):
    """A staging folder inside ``export_dir`` to build an export in, removed afterwards; a failed write is an
    ExportError naming the folder (so nothing half-written is left behind)."""
    staging = _prepare_export_dir(export_dir)
    try:
        yield staging
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_export_dir(export_dir: str) -> str:
    try:
        os.makedirs(export_dir, exist_ok=True)
        return tempfile.mkdtemp(prefix=".staging-", dir=export_dir)
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None


@dataclasses.dataclass
class ExportImages:
    """The images an export uses, as uint8 pixels of the model's input size."""

    representative: np.ndarray  # float32 [0, 1], with a black and a white image first (int8 calibration)
    test_pixels: np.ndarray
    test_labels: np.ndarray
    preprocessing: manifest_lib.Preprocessing


def load_export_images(config: ExportConfig, metrics: dict) -> ExportImages:
    """Calibration images (training split) and parity images (test split) of the model's dataset."""
    from nopeek_tf.training import data

    raw = data.load_as_trained(metrics)
    train_pixels, _ = _take_pixels(raw.train.shuffle(10_000, seed=0), config.representative_images)
    test_pixels, test_labels = _take_pixels(raw.test, config.parity_images)
    shape = metrics["input_shape"]
    preprocessing = manifest_lib.Preprocessing(image_size=list(shape[:2]), channels=int(shape[2]))
    # A black and a white image make the int8 input cover every pixel value:
    # uint8 pixels then map exactly (scale 1/255, zero point 0).
    extremes = np.stack([np.zeros_like(train_pixels[0]), np.full_like(train_pixels[0], 255)])
    representative = np.concatenate([extremes, train_pixels]).astype(np.float32) * np.float32(preprocessing.scale)
    return ExportImages(representative, test_pixels, test_labels, preprocessing)


def _take_pixels(dataset, count: int):
    """The first ``count`` (uint8 images, labels) of a raw split as numpy arrays."""
    images, labels = [], []
    for image, label in dataset.take(count).batch(1000):
        images.append(image.numpy())
        labels.append(label.numpy())
    return np.concatenate(images), np.concatenate(labels)


def load_trained(model_dir: str):
    split, metrics = model_dir_lib.load(model_dir)
    if split.device_noise is not None and not split.bounded:
        raise ExportError(f"--model_dir {model_dir} adds device noise to a client that does not end in tanh; "
                          "train it with --bottleneck=K --bounded")
    if split.noise is not None:
        raise ExportError(f"--model_dir {model_dir} is a noise baseline (trained with --noise): its client "
                          f"would ship without the noise it was evaluated with; export a NoPeek model instead")
    return split, metrics
