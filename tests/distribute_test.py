"""tf.distribute through the one training loop: the global-batch dCor, steps equal to the single-device
step under mirrored and multi-worker, chief-only writes, resume after a kill, and an unreachable peer."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from nopeek_tf import config as config_lib
from nopeek_tf.core import models
from nopeek_tf import training
from nopeek_tf.core.dcor import distance_correlation
from tests.conftest import REPO_ROOT
from nopeek_tf.training.distribute import free_ports

STEP_SCRIPT = os.path.join(REPO_ROOT, "tests", "distributed_step.py")


def _run_step(tmp_path, kind, replicas=None, adversary=False, user_model=False):
    output = tmp_path / f"step_{kind}_{replicas}_{adversary}_{user_model}.npz"
    args = [kind, *([str(replicas)] if replicas else []), str(output)]
    env = {**os.environ, **({"NOPEEK_STEP_ADVERSARY": "1"} if adversary else {}),
           **({"NOPEEK_STEP_USER_MODEL": "1"} if user_model else {})}
    result = subprocess.run([sys.executable, STEP_SCRIPT, *args], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(output))


def _assert_same_step(step, single):
    assert float(step["dcor"]) == pytest.approx(float(single["dcor"]), abs=1e-5)
    assert float(step["loss"]) == pytest.approx(float(single["loss"]), abs=1e-5)
    names = sorted(key for key in single if key.startswith("gradient_"))
    assert len(names) == 10  # 5 layers with kernels and biases
    for name in names:
        np.testing.assert_allclose(step[name], single[name], atol=1e-5)
    assert max(np.abs(single[name]).max() for name in names) > 1e-3  # a real step, not a zero gradient


@pytest.fixture(scope="module")
def single_step(tmp_path_factory):
    return _run_step(tmp_path_factory.mktemp("single"), "single")


def test_mirrored_step_with_attacker_aware_training_equals_single_device_step(tmp_path):
    """The in-loop decoder (and the client's penalty on it) under 2 replicas: the same step as one device."""
    single = _run_step(tmp_path, "single", adversary=True)
    mirrored = _run_step(tmp_path, "mirrored", 2, adversary=True)
    _assert_same_step(mirrored, single)
    weights = sorted(key for key in single if key.startswith("weight_"))
    assert len(weights) > 10  # the model's 10 and the decoder's
    for name in weights:
        np.testing.assert_allclose(mirrored[name], single[name], atol=1e-5)


def test_mirrored_step_of_a_split_user_model_equals_single_device_step(tmp_path):
    """A user's Sequential model (ending in softmax) split at a named layer: the global-batch dCor and the
    same step under 2 replicas as on one device."""
    _assert_same_step(_run_step(tmp_path, "mirrored", 2, user_model=True),
                      _run_step(tmp_path, "single", user_model=True))


@pytest.mark.slow
def test_a_user_model_with_batch_norm_and_dropout_trains_mirrored_attacker_aware_and_resumes(tmp_path):
    model_file = str(tmp_path / "bn.keras")
    keras.utils.set_random_seed(0)
    image = keras.Input((28, 23, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    keras.Model(image, keras.layers.Dense(40, name="out")(x)).save(model_file)
    model_dir = str(tmp_path / "run")
    # In its own processes: two MirroredStrategy runs in one process would share collective instance keys.
    command = [sys.executable, "-m", "train.train", "--dataset=orl_faces", f"--model_file={model_file}", "--cut=pool",
               "--batch_size=8", "--alpha=1", "--adversary_weight=1", "--adversary_width=4", "--strategy=mirrored",
               "--cpu_devices=2", "--dcor_batch_size=50", f"--model_dir={model_dir}"]
    for epochs in (1, 2):
        result = subprocess.run([*command, f"--epochs={epochs}"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        with open(os.path.join(model_dir, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["epochs_run_now"] == 1 and metrics["replicas"] == 2, metrics
    assert metrics["input_shape"] == [28, 23, 1] and metrics["test_accuracy"] > 1 / 40
    saved = models.split_halves(keras.models.load_model(os.path.join(model_dir, "model.keras"), compile=False))
    moving_mean = saved.client.get_layer("bn").moving_mean.numpy()
    assert np.abs(moving_mean).max() > 0  # the statistics were estimated, not left at their start


@pytest.mark.parametrize("replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_mirrored_step_equals_single_device_step(replicas, tmp_path, single_step):
    step = _run_step(tmp_path, "mirrored", replicas)
    _assert_same_step(step, single_step)

    # A per-replica dCor (the mean over the replicas' local batches) would be a
    # different number on this very batch: far outside the 1e-5 checked above.
    x = step["x"].astype(np.float32) / 255.0
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10)
    z = split.client(x).numpy()
    global_dcor = float(distance_correlation(x, z))
    per_replica = np.mean([float(distance_correlation(xs, zs))
                           for xs, zs in zip(np.split(x, replicas), np.split(z, replicas))])
    assert abs(per_replica - global_dcor) > 1e-4, (per_replica, global_dcor)


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _start_workers(command, ports=None, cwd=REPO_ROOT):
    """Two worker processes on loopback, each with its TF_CONFIG; ``command(index)`` is a worker's argv."""
    ports = ports or free_ports(2)
    return [subprocess.Popen(command(index), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": _tf_config(ports, index)})
            for index in range(2)]


def _finish(workers, timeout=600):
    outputs = []
    for worker in workers:
        try:
            stdout, stderr = worker.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    return outputs


def test_multi_worker_step_equals_single_device_step(tmp_path, single_step):
    workers = _start_workers(lambda index: [sys.executable, STEP_SCRIPT, "multi_worker",
                                            str(tmp_path / f"worker{index}.npz")])
    _finish(workers, timeout=300)
    steps = [dict(np.load(tmp_path / f"worker{index}.npz")) for index in range(2)]
    for step in steps:
        _assert_same_step(step, single_step)
    for name in (key for key in steps[0] if key.startswith("weight_")):
        np.testing.assert_array_equal(steps[0][name], steps[1][name])  # every worker holds the same weights


def _train_command(model_dir, epochs, *extra):
    return [sys.executable, "-m", "train.train", "--strategy=multi_worker", "--dataset=orl_faces",
            "--image_size=28x23", "--batch_size=16", f"--epochs={epochs}", "--alpha=1", "--dcor_batch_size=50",
            f"--model_dir={model_dir}", *extra]


def _fingerprint(stdout):
    return [line.split()[-1] for line in stdout.splitlines() if line.startswith("weights fingerprint")][-1]


def test_multi_worker_training_only_the_chief_writes(tmp_path):
    """Two workers with their own model dirs (no shared disk): the chief's is complete, the other's never made."""
    workers = _start_workers(lambda index: _train_command(tmp_path / f"worker{index}", 2))
    chief, other = _finish(workers)
    assert _fingerprint(chief) == _fingerprint(other)
    assert "worker:1: not the chief, wrote no files" in other
    assert not (tmp_path / "worker1").exists()
    run = tmp_path / "worker0"
    assert {"config.json", "metrics.json", "model.keras", "checkpoints", "logs"} <= set(os.listdir(run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["replicas"], metrics["written_by"], metrics["epochs_run_now"]) == (2, "worker:0", 2)
    assert json.loads((run / "checkpoints" / "epoch.json").read_text()) == {"epoch": 2}


def test_a_worker_that_cannot_reach_its_peer_fails_with_one_line(tmp_path):
    (port,) = free_ports(1)
    started = time.time()
    result = subprocess.run(_train_command(tmp_path / "run", 1, "--peer_timeout_seconds=10"), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "TF_CONFIG": _tf_config([port, 1], 0)})  # port 1: nobody listens there
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and time.time() - started < 60
    assert len(lines) == 1 and lines[0].startswith("error: TF_CONFIG: the workers (127.0.0.1:"), result.stderr


@pytest.mark.slow
def test_multi_worker_killed_and_restarted_ends_as_an_uninterrupted_run(tmp_path):
    epochs = 4
    whole = _fingerprint(_finish(_start_workers(lambda index: _train_command(tmp_path / "whole", epochs)))[0])

    run = tmp_path / "killed"
    workers = _start_workers(lambda index: _train_command(run, epochs))
    state = run / "checkpoints" / "epoch.json"
    deadline = time.time() + 300
    while time.time() < deadline and all(w.poll() is None for w in workers):
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    for worker in workers:
        worker.kill()
        worker.communicate()
    finished = json.loads(state.read_text())["epoch"]
    assert 1 <= finished < epochs and not (run / "metrics.json").exists(), "the run ended before it was killed"

    outputs = _finish(_start_workers(lambda index: _train_command(run, epochs)))
    assert f"Epoch {finished + 1}/{epochs}" in outputs[0] and "Epoch 1/" not in outputs[0]
    assert _fingerprint(outputs[0]) == _fingerprint(outputs[1]) == whole


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


def test_multi_worker_needs_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config_lib.ConfigError, match="needs the TF_CONFIG"):
        training.train_and_evaluate(config_lib.TrainConfig(strategy="multi_worker"), str(tmp_path / "run"))


def test_cpu_devices_flag_splits_the_cpu_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "train.train", "--strategy=mirrored", "--cpu_devices=2",
                             "--dataset=orl_faces", "--image_size=28x23", "--epochs=1", "--batch_size=8",
                             f"--model_dir={tmp_path / 'run'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["replicas"] == 2
