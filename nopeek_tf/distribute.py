"""tf.distribute for training: the strategy a config asks for, and which task writes files."""

from __future__ import annotations

import hashlib
import re

import keras
import tensorflow as tf

from nopeek_tf.config import ConfigError, TrainConfig

# Keras 3 fit() fails under MultiWorkerMirroredStrategy up to this version (checked
# here with 3.15.1 and a one-layer model; keras-team/keras#20585). Raise it when a
# fixed Keras is out and tests/distribute_test.py's multi-worker test passes.
KERAS_WITHOUT_MULTI_WORKER_FIT = (3, 15, 1)


def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (for developing tf.distribute without GPUs).

    Must run before TensorFlow initialises its devices; a second call with the
    same count is a no-op.
    """
    (cpu,) = tf.config.list_physical_devices("CPU")
    if len(tf.config.list_logical_devices("CPU")) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ConfigError("--cpu_devices must take effect before TensorFlow starts; it cannot change "
                          "in a running process") from None


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy of ``config.strategy``; checks the batch divides over its replicas."""
    if config.cpu_devices > 1:
        split_cpu(config.cpu_devices)
    if config.strategy == "mirrored":
        devices = list(config.devices) if config.devices else None
        if devices is None and not tf.config.list_physical_devices("GPU"):
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        try:
            strategy = tf.distribute.MirroredStrategy(devices)
        except (ValueError, RuntimeError) as error:
            raise ConfigError(f"--devices: {error}") from None
    elif config.strategy == "multi_worker":
        keras_version = tuple(int(part) for part in re.findall(r"\d+", keras.version())[:3])
        if keras_version <= KERAS_WITHOUT_MULTI_WORKER_FIT:
            raise ConfigError(
                f"--strategy=multi_worker: Keras {keras.version()} cannot fit() under MultiWorkerMirroredStrategy "
                "(keras-team/keras#20585: even a one-layer model fails); use mirrored on one machine")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size {config.batch_size} (the global batch) does not divide over "
                          f"{replicas} replicas; use a multiple of {replicas}")
    return strategy


def task_name(strategy: tf.distribute.Strategy) -> str:
    """"chief", "worker:N", or "local" for a single-machine strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local"
    return "chief" if resolver.task_type == "chief" else f"{resolver.task_type}:{resolver.task_id}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the task that writes files: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def weights_fingerprint(model: keras.Model) -> str:
    """A short hash of a model's weights: equal on every worker of a synchronous run."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


class ChiefBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras BackupAndRestore (every epoch; never deleted) that only the ``writer`` saves.

    Every worker restores from the shared ``backup_dir`` so that all resume at
    the same epoch; only the chief writes it. Overrides Keras's private
    ``_save_model`` (pinned in requirements.txt; tests/private_hooks_test.py
    fails when it disappears).
    """

    def __init__(self, backup_dir: str, writer: bool):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.writer = writer

    def _save_model(self):
        if self.writer:
            super()._save_model()
