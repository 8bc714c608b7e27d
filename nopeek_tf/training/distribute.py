"""tf.distribute for training: the strategy a config asks for, and which task writes files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import keras
import tensorflow as tf

from nopeek_tf.config import ConfigError, TrainConfig

def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (for developing tf.distribute without GPUs).

    Must run before TensorFlow initialises its devices; a second call with the
    same count is a no-op.
    """
    (cpu,) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # TensorFlow has started: fine if it already has that many
        if len(tf.config.list_logical_devices("CPU")) != count:
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
        watchdog = PeerWatchdog(config.peer_timeout_seconds)  # the constructor already waits for the peers
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        strategy.peer_watchdog = watchdog
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size {config.batch_size} (the global batch) does not divide over "
                          f"{replicas} replicas; use a multiple of {replicas}")
    return strategy


# The watchdog process: waits for its stdin to close (the workers met, or the trainer ended);
# after the timeout it prints the message and kills the trainer.
_WATCHDOG = """
import os, select, signal, sys
trainer, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(trainer, signal.SIGKILL)
"""


class PeerWatchdog:
    """Ends the process with one line naming TF_CONFIG if the workers have not met within ``seconds``.

    A MultiWorkerMirroredStrategy whose peers are unreachable (a wrong address,
    a worker that was never started) waits in TensorFlow's C++ runtime for ever,
    holding the GIL and ignoring SIGTERM, so the watch runs in a small separate
    process. It starts before the strategy connects and stops once the first
    collective step has run.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        try:
            cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        except ValueError:
            cluster = {}
        peers = ", ".join(address for addresses in cluster.values() for address in addresses) or "none"
        message = (f"error: TF_CONFIG: the workers ({peers}) did not all connect within {seconds:g} s "
                   "(--peer_timeout_seconds); check the addresses and start every worker")
        self._process = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds), message],
                                         stdin=subprocess.PIPE)

    def stop(self) -> None:
        """The workers have met: stop watching."""
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait()
            self._process = None


def peers_met(strategy: tf.distribute.Strategy) -> None:
    """Stops the strategy's peer watchdog, if it has one (after the first collective step)."""
    watchdog = getattr(strategy, "peer_watchdog", None)
    if watchdog is not None:
        watchdog.stop()


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


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports that were free on 127.0.0.1 a moment ago (for workers and servers on loopback)."""
    import socket

    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports
