"""Longer end-to-end checks on the real offline datasets (pytest -m slow; CI runs them)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from train import train


@pytest.mark.slow
def test_quick_start_training_run(tmp_path):
    """The README's main job with its default flags: NoPeek on ORL faces."""
    model_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "train.train", f"--model_dir={model_dir}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "test dCor" in result.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "orl_faces" and metrics["alpha"] > 0
    assert metrics["test_accuracy"] > 0.8  # 40 people: chance is 0.025
    assert metrics["test_dcor"] < 0.95  # without NoPeek it stays above 0.99


@pytest.mark.slow
def test_fashion_mnist_one_epoch(tmp_path):
    config = train.TrainConfig(dataset="fashion_mnist", alpha=0.0, epochs=1, batch_size=128,
                               dcor_batch_size=500, verbose=0)
    metrics = train.train_and_evaluate(config, str(tmp_path / "fm"))
    assert metrics["arch"] == "mnist_cnn" and metrics["activation_shape"] == [14, 14, 32]
    assert metrics["test_accuracy"] > 0.8
    assert metrics["test_dcor"] > 0.9  # no defence: activations mirror the pixels
