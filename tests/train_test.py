"""The training script: outputs, resume (also after a real kill), and one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from nopeek_tf.core import models
from nopeek_tf import config as config_lib
from nopeek_tf import training
from tests.conftest import REPO_ROOT

SMALL_ORL = dict(dataset="orl_faces", image_size=(28, 23), batch_size=8, dcor_batch_size=50, verbose=0)


def _scalar_tags(log_dir):
    tags = set()
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_train_and_evaluate_writes_everything_and_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    config = config_lib.TrainConfig(**SMALL_ORL, alpha=1.0, epochs=1)
    metrics = training.train_and_evaluate(config, model_dir)

    for key in ("test_accuracy", "test_dcor", "dcor_batch_size", "alpha", "dataset", "arch", "cut"):
        assert key in metrics
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f) == metrics
    assert (metrics["dataset"], metrics["arch"], metrics["cut"], metrics["alpha"]) == ("orl_faces", "orl_cnn", "conv2", 1.0)
    assert metrics["dcor_batch_size"] == 50 and 0.0 < metrics["test_dcor"] <= 1.0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs_run_now"] == 1

    for split in ("train", "validation"):
        assert {"epoch_loss", "epoch_accuracy", "epoch_dcor"} <= _scalar_tags(os.path.join(model_dir, "logs", split))
    assert json.load(open(os.path.join(model_dir, "checkpoints", "epoch.json"))) == {"epoch": 1}

    loaded = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    halves = models.split_halves(loaded)
    assert halves.activation_shape == tuple(metrics["activation_shape"])
    x = np.random.default_rng(0).uniform(size=(3, 28, 23, 1)).astype(np.float32)
    np.testing.assert_allclose(halves.server(halves.client(x)).numpy(), loaded.predict(x, verbose=0), atol=1e-5)

    # Same flags, more epochs: continues after the finished epoch.
    resumed = training.train_and_evaluate(config_lib.TrainConfig(**SMALL_ORL, alpha=1.0, epochs=2), model_dir)
    assert resumed["epochs_run_now"] == 1

    # Other flags in the same model dir: refused, nothing overwritten.
    with pytest.raises(config_lib.ConfigError, match=r"holds a run with other flags \(alpha: 1.0 -> 2.0\)"):
        training.train_and_evaluate(config_lib.TrainConfig(**SMALL_ORL, alpha=2.0, epochs=2), model_dir)


def _run_cli(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "train.train", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("config, flag", [
    (dict(arch="vgg"), "--arch"),
    (dict(cut="conv9"), "--cut"),
    (dict(alpha=-1.0), "--alpha"),
    (dict(batch_size=1), "--batch_size"),
])
def test_bad_settings_name_the_flag(tmp_path, config, flag):
    with pytest.raises(config_lib.ConfigError) as error:
        training.train_and_evaluate(config_lib.TrainConfig(**config, verbose=0), str(tmp_path / "run"))
    assert str(error.value).startswith(flag)
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_is_named_and_nothing_is_written(tmp_path):
    from nopeek_tf.training.data import DatasetError

    with pytest.raises(DatasetError, match="^dataset no_such_dataset is not available offline"):
        training.train_and_evaluate(config_lib.TrainConfig(dataset="no_such_dataset", verbose=0),
                                    str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bad_image_size_and_model_dir_name_the_flag(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="^--image_size must look like HEIGHTxWIDTH"):
        config_lib.parse_image_size("big")
    (tmp_path / "file").write_text("x")
    with pytest.raises(config_lib.ConfigError, match="^--model_dir .* cannot be written"):
        training.train_and_evaluate(config_lib.TrainConfig(**SMALL_ORL, epochs=1), str(tmp_path / "file" / "run"))


def test_bad_flags_end_with_one_line_naming_the_flag(tmp_path):
    """The command line: one line on stderr, non-zero exit, no traceback (one process per case)."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    cases = {
        "--dataset": ["--dataset=no_such_dataset", f"--model_dir={tmp_path / 'unused'}"],
        "--alpha": ["--alpha=-1", f"--model_dir={tmp_path / 'unused'}"],
        "--client_width": ["--client_width=0", f"--model_dir={tmp_path / 'unused'}"],
        "--model_dir": [f"--model_dir={not_a_folder}/run"],
    }
    processes = {flag: _run_cli(args) for flag, args in cases.items()}
    for flag, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode != 0, flag
        assert "Traceback" not in stderr, stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), (flag, stderr)
    assert not (tmp_path / "unused").exists()


@pytest.mark.slow
def test_killed_run_resumes_from_last_finished_epoch(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--dataset=orl_faces", "--image_size=28x23", "--batch_size=4", "--epochs=8",
            "--alpha=1", f"--model_dir={model_dir}"]
    metadata = model_dir / "checkpoints" / "epoch.json"
    process = _run_cli(args)
    deadline = time.time() + 240
    while not metadata.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = json.loads(metadata.read_text())["epoch"]
    assert 1 <= finished < 8
    assert not (model_dir / "metrics.json").exists()

    process = _run_cli(args)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"Epoch {finished + 1}/8" in stdout and "Epoch 1/8" not in stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_run_now"] == 8 - finished
    assert "test accuracy" in stdout
