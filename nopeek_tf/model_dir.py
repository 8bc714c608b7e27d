"""The layout of a model dir (written by ``python -m train.train``): creating, writing and loading one.

Importing this module does not import TensorFlow; :func:`load` and :func:`save_model` do.
"""

from __future__ import annotations

import json
import os

from nopeek_tf import files
from nopeek_tf.config import ConfigError, TrainConfig, changed_settings

MODEL_FILE = "model.keras"
# Split training (python -m train.split_client / split_server): each side keeps only its own half.
CLIENT_MODEL_FILE = "client.keras"  # image -> what the device sends (the client half and its noise)
SERVER_MODEL_FILE = "server.keras"  # activations -> logits
MODEL_FILES = (MODEL_FILE, CLIENT_MODEL_FILE, SERVER_MODEL_FILE)
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LEAKAGE_FILE = "leakage.json"  # written by python -m train.leakage
RECONSTRUCTIONS_FILE = "reconstructions.npz"  # the attacks' first reconstructions (train.sweep's grid)


class ModelDirError(ValueError):
    """A model dir that is missing or holds no trained model."""


def read_metrics(model_dir: str) -> dict:
    """The metrics.json of the trained model in ``model_dir`` (without loading the model).

    Raises:
      ModelDirError: ``model_dir`` does not exist or holds no model.keras and metrics.json.
    """
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"--model_dir {model_dir} does not exist")
    if not os.path.exists(os.path.join(model_dir, METRICS_FILE)) or not any(
            os.path.exists(os.path.join(model_dir, name)) for name in MODEL_FILES):
        raise ModelDirError(f"--model_dir {model_dir} holds no trained model ({MODEL_FILE} and {METRICS_FILE}); "
                            f"train first: python -m train.train --model_dir={model_dir}")
    with open(os.path.join(model_dir, METRICS_FILE)) as f:
        return json.load(f)


def load(model_dir: str):
    """Loads the trained split model and its metrics from ``model_dir``.

    Returns:
      (a nopeek_tf.core.models.SplitModel, the metrics.json content).

    Raises:
      ModelDirError: ``model_dir`` does not exist or holds no model.keras and metrics.json.
    """
    metrics = read_metrics(model_dir)
    import keras

    from nopeek_tf.core import models

    side = metrics.get("split_side")
    if side == "server":
        raise ModelDirError(f"--model_dir {model_dir} holds a split server's half only (server.keras); the client "
                            "half is in a client's model dir")
    loaded = keras.models.load_model(os.path.join(model_dir, model_file(metrics)), compile=False)
    return models.split_halves(loaded, client_only=side == "client"), metrics


def model_file(metrics: dict) -> str:
    """The model file of a model dir: model.keras, or a split training side's client.keras or server.keras."""
    return {"client": CLIENT_MODEL_FILE, "server": SERVER_MODEL_FILE}.get(metrics.get("split_side"), MODEL_FILE)


def leakage_file(model_dir: str, variant: str = "keras", name: str = LEAKAGE_FILE) -> str:
    """A leakage output's path: ``leakage.json`` for the Keras client, ``leakage_int8.json`` for the int8 file..."""
    root, extension = os.path.splitext(name)
    suffix = "" if variant == "keras" else f"_{variant}"
    return os.path.join(model_dir, f"{root}{suffix}{extension}")


def read_leakage(model_dir: str, name: str = LEAKAGE_FILE) -> dict | None:
    """The leakage report ``name`` (``leakage.json``: the Keras client's) in ``model_dir``, or None if there is none."""
    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def default_path(config: TrainConfig) -> str:
    """runs/<dataset>_<arch>_<cut>_alpha<alpha>, with _width<client_width> when it is not 1 and
    _bottleneck<channels> with a bottleneck."""
    width = f"_width{config.client_width:g}" if config.client_width != 1 else ""
    width += f"_bottleneck{config.bottleneck}" if config.bottleneck else ""
    return os.path.join("runs", f"{config.dataset}_{config.arch}_{config.cut}{width}_alpha{config.alpha:g}")


def prepare(model_dir: str, config: TrainConfig, writer: bool = True) -> None:
    """Creates ``model_dir``, checks it is writable and that a run in it has the same flags; writes config.json.

    Only the ``writer`` (the chief of a cluster) creates files.

    Raises:
      ConfigError: the folder cannot be written, or holds a run with other flags.
    """
    if not writer:
        return
    try:
        os.makedirs(model_dir, exist_ok=True)
        files.write_text(os.path.join(model_dir, ".write_test"), "ok")
        os.remove(os.path.join(model_dir, ".write_test"))
    except OSError as error:
        raise ConfigError(f"--model_dir {model_dir} cannot be written: {error.strerror or error}") from None
    config_path = os.path.join(model_dir, CONFIG_FILE)
    wanted = config.to_json()
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        changed = changed_settings(previous, config)
        if changed:
            details = ", ".join(f"{key}: {previous.get(key)!r} -> {wanted[key]!r}" for key in changed)
            raise ConfigError(
                f"--model_dir {model_dir} holds a run with other flags ({details}); use another --model_dir")
    files.write_json(config_path, wanted, sort_keys=True)


def finished_metrics(model_dir: str, config: TrainConfig, ignore=()) -> dict | None:
    """metrics.json of a finished run of ``config`` in ``model_dir``, or None (missing, or other settings).

    Settings in ``ignore`` may differ; so may arch and cut where ``config`` says "auto".
    """
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    ignore = [*ignore, *(key for key in ("arch", "cut") if getattr(config, key) == "auto")]
    return None if changed_settings(metrics, config, ignore) else metrics


def save_model(model_dir: str, model, metrics: dict, model_file: str = MODEL_FILE) -> None:
    """Writes the model (model.keras) and metrics.json atomically (metrics last: it marks a finished run)."""
    with files.atomic_path(os.path.join(model_dir, model_file)) as temporary:
        model.save(temporary)
    files.write_json(os.path.join(model_dir, METRICS_FILE), metrics, sort_keys=True)
