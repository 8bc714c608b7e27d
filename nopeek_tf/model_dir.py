"""The layout of a model dir (written by ``python -m train.train``) and its loader.

Importing this module does not import TensorFlow; :func:`load` does.
"""

from __future__ import annotations

import json
import os

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LEAKAGE_FILE = "leakage.json"  # written by python -m train.leakage


class ModelDirError(ValueError):
    """A model dir that is missing or holds no trained model."""


def read_metrics(model_dir: str) -> dict:
    """The metrics.json of the trained model in ``model_dir`` (without loading the model).

    Raises:
      ModelDirError: ``model_dir`` does not exist or holds no model.keras and metrics.json.
    """
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"--model_dir {model_dir} does not exist")
    if not all(os.path.exists(os.path.join(model_dir, name)) for name in (MODEL_FILE, METRICS_FILE)):
        raise ModelDirError(f"--model_dir {model_dir} holds no trained model ({MODEL_FILE} and {METRICS_FILE}); "
                            f"train first: python -m train.train --model_dir={model_dir}")
    with open(os.path.join(model_dir, METRICS_FILE)) as f:
        return json.load(f)


def load(model_dir: str):
    """Loads the trained split model and its metrics from ``model_dir``.

    Returns:
      (a nopeek_tf.models.SplitModel, the metrics.json content).

    Raises:
      ModelDirError: ``model_dir`` does not exist or holds no model.keras and metrics.json.
    """
    metrics = read_metrics(model_dir)
    import keras

    from nopeek_tf import models

    return models.split_halves(keras.models.load_model(os.path.join(model_dir, MODEL_FILE), compile=False)), metrics
