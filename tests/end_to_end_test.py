"""Longer end-to-end checks on the real offline datasets (pytest -m slow; CI runs them)."""

import json
import os
import subprocess

import pytest

from export.card import EXCESS_WARNING
from nopeek_tf import config as config_lib
from nopeek_tf import training
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_start(tmp_path):
    """The README's main job: train ORL with the recommended defence, attack, export, serve, classify on the edge."""
    from nopeek_tf.training.distribute import free_ports

    run_dir = tmp_path / "run"
    rest_port, grpc_port = free_ports(2)
    env = {**os.environ, "REST_PORT": str(rest_port), "GRPC_PORT": str(grpc_port)}
    result = subprocess.run(["bash", "quickstart.sh", str(run_dir)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test accuracy" in result.stdout and "test dCor" in result.stdout
    assert "over the label-only floor" in result.stdout  # the quick attack's verdict
    assert "privacy card: worst attack" in result.stdout  # the exporter's, from the card it wrote
    card = json.loads((run_dir / "export" / "client" / "manifest.json").read_text())["privacy"]
    assert card["excess_ssim"] is not None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recommended = config_lib.RECOMMENDED_DEFENCE["orl_faces"]
    assert metrics["dataset"] == "orl_faces" and metrics["defence"] == "recommended"
    assert {name: metrics[name] for name in recommended} == recommended
    assert metrics["test_accuracy"] > 0.8  # 40 people: chance is 0.025
    # The quick start ships a protected client: the exporter does not warn, its card's excess is within the line.
    verdicts = [line for line in (result.stdout + result.stderr).splitlines() if "privacy card: worst attack" in line]
    assert verdicts and not any(line.startswith("warning:") for line in verdicts), verdicts
    assert card["excess_ssim"] <= EXCESS_WARNING, card
    assert "20 images via grpc (int8 client)" in result.stdout
    assert "10 images via rest (float32 client)" in result.stdout
    predicted = [line.split(": ")[1].split(" ")[0] for line in result.stdout.splitlines() if ".pgm: " in line]
    truth = [line.split("/")[-2] for line in result.stdout.splitlines() if ".pgm: " in line]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 0.8 * len(truth)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="Debian's dataset-fashion-mnist is not installed (setup.sh installs it where apt works)")
def test_fashion_mnist_one_epoch(tmp_path):
    config = config_lib.TrainConfig(dataset="fashion_mnist", alpha=0.0, epochs=1, batch_size=128,
                                    dcor_batch_size=500, verbose=0)
    metrics = training.train_and_evaluate(config, str(tmp_path / "fm"))
    assert metrics["arch"] == "mnist_cnn" and metrics["activation_shape"] == [14, 14, 32]
    assert metrics["test_accuracy"] > 0.8
    assert metrics["test_dcor"] > 0.9  # no defence: activations mirror the pixels
