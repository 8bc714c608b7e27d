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


def load(model_dir: str):
    """Loads the trained split model and its metrics from ``model_dir``.

    Returns:
      (a nopeek_tf.models.SplitModel, the metrics.json content).

    Raises:
      ModelDirError: ``model_dir`` does not exist or holds no model.keras and metrics.json.
    """
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"--model_dir {model_dir} does not exist")
    model_path = os.path.join(model_dir, MODEL_FILE)
    metrics_path = os.path.join(model_dir, METRICS_FILE)
    if not (os.path.exists(model_path) and os.path.exists(metrics_path)):
        raise ModelDirError(f"--model_dir {model_dir} holds no trained model ({MODEL_FILE} and {METRICS_FILE}); "
                            f"train first: python -m train.train --model_dir={model_dir}")
    import keras

    from nopeek_tf import models

    with open(metrics_path) as f:
        metrics = json.load(f)
    return models.split_halves(keras.models.load_model(model_path, compile=False)), metrics
