"""tf.distribute: the dCor of the global batch, equal to the single-device step; multi-worker."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from nopeek_tf import models
from nopeek_tf.dcor import distance_correlation
from nopeek_tf import config as config_lib
from nopeek_tf import training
from tests.conftest import REPO_ROOT


def _run_step(replicas, tmp_path):
    output = tmp_path / f"step_{replicas}.npz"
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "mirrored_step.py"),
                             str(replicas), str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(output))


@pytest.mark.parametrize("replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_mirrored_step_equals_single_device_step(replicas, tmp_path):
    step = _run_step(replicas, tmp_path)
    assert float(step["mirrored_dcor"]) == pytest.approx(float(step["single_dcor"]), abs=1e-5)
    assert float(step["mirrored_loss"]) == pytest.approx(float(step["single_loss"]), abs=1e-5)
    names = sorted(key for key in step if key.startswith("single_gradient_"))
    assert names
    for name in names:
        np.testing.assert_allclose(step[name.replace("single", "mirrored")], step[name], atol=1e-5)
    assert max(np.abs(step[name]).max() for name in names) > 1e-3  # a real step, not a zero gradient

    # A per-replica dCor (the mean over the replicas' local batches) would be a
    # different number on this very batch: far outside the 1e-5 checked above.
    x = step["x"]
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10)
    keras.utils.set_random_seed(0)
    z = split.client(x).numpy()
    global_dcor = float(distance_correlation(x, z))
    per_replica = np.mean([float(distance_correlation(xs, zs))
                           for xs, zs in zip(np.split(x, replicas), np.split(z, replicas))])
    assert abs(per_replica - global_dcor) > 1e-4, (per_replica, global_dcor)


def test_train_and_evaluate_mirrored(tmp_path):
    config = config_lib.TrainConfig(dataset="orl_faces", image_size=(28, 23), batch_size=8, epochs=1, alpha=1.0,
                               strategy="mirrored", devices=("/cpu:0", "/cpu:1"), dcor_batch_size=50, verbose=0)
    metrics = training.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["replicas"] == 2 and metrics["written_by"] == "local"
    assert os.path.exists(tmp_path / "run" / "model.keras")


def test_global_batch_must_divide_over_replicas(tmp_path):
    config = config_lib.TrainConfig(dataset="orl_faces", batch_size=6, strategy="mirrored",
                               devices=("/cpu:0", "/cpu:1", "/cpu:2", "/cpu:3"), verbose=0)
    with pytest.raises(config_lib.ConfigError, match="--batch_size 6 .* does not divide over 4 replicas"):
        training.train_and_evaluate(config, str(tmp_path / "run"))


def test_mixed_precision_keeps_dcor_in_float32(tmp_path):
    config = config_lib.TrainConfig(dataset="orl_faces", image_size=(28, 23), batch_size=8, epochs=1,
                               mixed_precision=True, dcor_batch_size=50, verbose=0)
    metrics = training.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["test_loss"]) and 0 < metrics["test_dcor"] <= 1
    loaded = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert loaded.get_layer("client").get_layer("conv1_conv").dtype_policy.name == "mixed_float16"
    assert loaded.get_layer(models.NOPEEK_NAME).dtype_policy.name == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_multi_worker_refuses_with_the_upstream_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                               "task": {"type": "worker", "index": 0}}))
    config = config_lib.TrainConfig(strategy="multi_worker", verbose=0)
    with pytest.raises(config_lib.ConfigError, match="keras-team/keras#20585"):
        training.train_and_evaluate(config, str(tmp_path / "run"))


def test_multi_worker_needs_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config_lib.ConfigError, match="needs the TF_CONFIG"):
        training.train_and_evaluate(config_lib.TrainConfig(strategy="multi_worker"), str(tmp_path / "run"))
