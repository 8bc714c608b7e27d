"""The run: a config resolved for its dataset, the model built, trained, evaluated and written.

``python -m train.train`` parses its flags into a :class:`nopeek_tf.config.TrainConfig`
and calls :func:`train_and_evaluate`; tests and the sweep call it directly. It
trains through :mod:`nopeek_tf.training.loop` under any strategy. :func:`resolve_config` is
the one way a config meets its dataset (``train.train``, the split server and the split client). Writes to the model
dir (the chief only): config.json (the settings; a run started again with the
same settings resumes after the last finished epoch), checkpoints/, logs/
(TensorBoard: loss, accuracy, dcor), model.keras and metrics.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TypeVar

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import attacks
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.config import TrainConfig
from nopeek_tf.core import models
from nopeek_tf.core.dcor import mean_batch_dcor
from nopeek_tf.device import bound
from nopeek_tf.training import collapse, data, distribute, loop, networks


@dataclasses.dataclass
class Run:
    """What one training run works with, once its settings are resolved."""

    config: TrainConfig  # arch and cut resolved
    model_dir: str
    strategy: tf.distribute.Strategy
    chief: bool
    raw: data.RawSplits
    input_shape: tuple[int, ...]


def describe(run: Run, split: models.SplitModel) -> str:
    """One line: the data, the model, the defence and the distribution."""
    config, info = run.config, run.raw.info
    network = os.path.basename(config.model_file) if config.model_file else config.arch
    width = f" (client width x{config.client_width:g})" if config.client_width != 1 else ""
    width += f" + a {config.bottleneck}-channel bottleneck" if config.bottleneck else ""
    schedule = ""
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        schedule = f" (0 for {config.alpha_warmup_epochs:g} epochs, then a {config.alpha_ramp_epochs:g}-epoch ramp)"
    if config.noise != "none":
        schedule += f"; {config.noise} noise x{config.noise_scale:g}"
    if config.device_noise:
        schedule += (f"; tanh-bounded, device noise std {config.device_noise:g}: at most "
                     f"{split.bound_report(info.num_classes)['bound_bits']:.2f} bits per image")
        if config.device_noise_warmup_epochs or config.device_noise_ramp_epochs:
            schedule += (f" (none for {config.device_noise_warmup_epochs:g} epochs, then a "
                         f"{config.device_noise_ramp_epochs:g}-epoch ramp)")
    elif config.bounded:
        schedule += "; tanh-bounded"
    if config.adversary_weight:
        schedule += (f"; attacker-aware x{config.adversary_weight:g} above SSIM {config.adversary_ssim_threshold:g}"
                     + (" (label-aware decoder)" if config.adversary_label_aware else ""))
    return (f"{info.name}: {info.num_train} train / {info.num_test} test images {run.input_shape}, "
            f"{info.num_classes} classes; {network} cut after {config.cut}{width} -> activations "
            f"{split.activation_shape}; alpha {config.alpha:g}{schedule}; "
            f"{run.strategy.num_replicas_in_sync} replica(s), global batch {config.batch_size}"
            + ("; mixed_float16" if config.mixed_precision else ""))


Loaded = TypeVar("Loaded", data.RawSplits, data.DatasetInfo)


def resolve_config(config: TrainConfig, load: Callable[[TrainConfig, tuple[int, int] | None, int | None], Loaded],
                   on_checked: Callable[[TrainConfig], None] | None = None) -> tuple[TrainConfig, Loaded]:
    """Resolves a config for its dataset, in the one order every program uses.

    The recommended defence (if asked) and the dataset's epochs and batch size; the checks (ConfigError
    naming the flag); ``on_checked(config)``, before any TensorFlow work (the strategy's set-up, split
    training's own checks); ``--model_file``'s input size; ``load(config, image_size, channels)`` (the data,
    or only its description); then arch and cut for the data's shape and classes.

    Returns:
      (the resolved config, what ``load`` returned).
    """
    config = config.with_defence().with_dataset_defaults()
    config.validate()
    networks.check_network(config)
    if on_checked is not None:
        on_checked(config)
    image_size, channels = config.image_size, config.channels or None
    if config.model_file:
        image_size, channels = networks.model_file_input(config)
    loaded = load(config, image_size, channels)
    info = loaded.info if isinstance(loaded, data.RawSplits) else loaded
    return networks.resolve_network(config, info.image_shape, info.num_classes), loaded


def load_dataset(config: TrainConfig, image_size: tuple[int, int] | None, channels: int | None) -> data.RawSplits:
    """The config's dataset at ``image_size`` and ``channels`` (:func:`resolve_config`'s usual ``load``)."""
    return data.load(config.dataset, config.data_dir, image_size, channels, config.test_fraction)


def start_run(config: TrainConfig, model_dir: str | None,
              on_checked: Callable[[TrainConfig], None] | None = None) -> Run:
    """Resolves the config for its dataset (:func:`resolve_config`), makes the strategy first (multi-worker
    set-up must precede other TensorFlow work), loads the data and prepares the model dir."""
    strategies = []

    def checked(settled: TrainConfig) -> None:
        if on_checked is not None:
            on_checked(settled)
        strategies.append(distribute.make_strategy(settled))

    config, raw = resolve_config(config, load_dataset, checked)
    strategy = strategies[0]
    chief = distribute.is_chief(strategy)
    model_dir = model_dir or model_dir_lib.default_path(config)
    model_dir_lib.prepare(model_dir, config, writer=chief)
    return Run(config, model_dir, strategy, chief, raw, tuple(raw.info.image_shape))


def build_model(run: Run) -> tuple[models.SplitModel, loop.Trainer]:
    """The split model and its trainer (optimizer), built under the run's strategy (and dtype policy).

    The full model is compiled with the same optimizer and loss, so that the saved
    ``model.keras`` can be trained further with ``fit``.
    """
    config = run.config
    with models.dtype_policy("mixed_float16" if config.mixed_precision else None):
        with run.strategy.scope():
            split_model = networks.build_split(config, run.input_shape, run.raw.info.num_classes)
        trainer = loop.Trainer(split_model, run.strategy, config.learning_rate, config.mixed_precision,
                               adversary=make_adversary(run))
        with run.strategy.scope():
            split_model.full.compile(optimizer=trainer.optimizer,
                                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                     metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return split_model, trainer


def make_adversary(run: Run) -> loop.Adversary | None:
    """The in-loop decoder of attacker-aware training (``--adversary_weight``), or None."""
    config = run.config
    if not config.adversary_weight:
        return None
    means = None
    if config.adversary_label_aware:
        images, labels = data.to_arrays(run.raw.train)
        means = attacks.class_means(images, labels, np.arange(run.raw.info.num_classes))
    return loop.Adversary(config.adversary_weight, config.adversary_ssim_threshold, config.adversary_width, means)


class EpochReporter:
    """What happens after each epoch besides training: TensorBoard, the leakage callback, the progress line.

    Only the chief writes; every task prints (a worker's lines say it is one).
    """

    def __init__(self, run: Run, split: models.SplitModel):
        self.run = run
        self.writers = {}
        self.leakage = None
        if run.chief:
            log_dir = os.path.join(run.model_dir, model_dir_lib.LOG_DIR)
            self.writers = {name: tf.summary.create_file_writer(os.path.join(log_dir, name))
                            for name in ("train", "validation")}
            if run.config.leakage_images:
                self.leakage = attacks.LeakageCallback(split.sent_activations,
                                                       test_images(run, run.config.leakage_images),
                                                       run.config.dcor_batch_size, os.path.join(log_dir, "leakage"))

    def __call__(self, epoch: int, train_logs: dict, validation_logs: dict, steps: int, seconds: float) -> None:
        for name, logs in (("train", train_logs), ("validation", validation_logs)):
            if name in self.writers:
                with self.writers[name].as_default():
                    for key, value in logs.items():
                        tf.summary.scalar(f"epoch_{key}", value, step=epoch)
                self.writers[name].flush()
        logs = {**train_logs, **{f"val_{key}": value for key, value in validation_logs.items()}}
        if self.leakage is not None:
            self.leakage.on_epoch_end(epoch, logs)
        if self.run.config.verbose:
            print(loop.progress_line(steps, seconds, logs), flush=True)


def test_images(run: Run, limit: int | None = None) -> np.ndarray:
    """The (first ``limit``) test images as the model sees them, float [0, 1]."""
    return data.to_arrays(run.raw.test, limit=limit)[0]


def fit(run: Run, split: models.SplitModel, trainer: loop.Trainer, test_ds) -> tuple[int, float]:
    """Trains (resuming after the last checkpointed epoch) up to ``config.epochs``.

    Returns:
      (epochs run in this call, their seconds).
    """
    config = run.config
    train_data = trainer.distribute(run.raw.train, config.batch_size, config.seed)
    # Its own stream, so that the training stream's shuffles (which a resumed run replays) stay as they were.
    refresh_data = trainer.distribute(run.raw.train, config.batch_size, config.seed + 1)
    steps = trainer.steps_per_epoch(run.raw.info.num_train, config.batch_size)
    checkpoints = loop.Checkpoints(os.path.join(run.model_dir, model_dir_lib.CHECKPOINT_DIR), trainer, run.chief)
    first_epoch = checkpoints.restore()
    loop.skip_epochs(train_data, first_epoch)
    schedules = step_schedules(config)
    report = EpochReporter(run, split)
    started = time.time()
    for epoch in range(first_epoch, config.epochs):
        if config.verbose:
            print(f"Epoch {epoch + 1}/{config.epochs}", flush=True)
        epoch_started = time.time()

        def before_step(step: int, epoch: int = epoch) -> None:
            if step == 1:
                distribute.peers_met(run.strategy)  # a first collective step has run
            for schedule in schedules:
                schedule.apply(split.full, epoch + step / steps)

        train_logs = trainer.train_epoch(train_data, steps, before_step)
        distribute.peers_met(run.strategy)
        trainer.refresh_batch_norm(refresh_data)
        validation_logs = trainer.evaluate(test_ds)
        checkpoints.save(epoch + 1)
        report(epoch, train_logs, validation_logs, steps, time.time() - epoch_started)
    return max(0, config.epochs - first_epoch), time.time() - started


def evaluate(run: Run, split: models.SplitModel, trainer: loop.Trainer, test_ds) -> dict:
    """Test accuracy and loss, and the mean test dCor of what the client sends."""
    evaluation = trainer.evaluate(test_ds)
    images, labels = data.to_arrays(run.raw.test)
    test_dcor, dcor_batch_size = mean_batch_dcor(images, split.sent_activations(images), run.config.dcor_batch_size)
    return {"test_accuracy": evaluation["accuracy"], "test_loss": evaluation["loss"],
            "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size,
            **collapse.collapse_report(evaluation["accuracy"], labels, run.config.reference_accuracy)}


def step_schedules(config: TrainConfig) -> list[models.AlphaSchedule]:
    """The schedules applied before each step: alpha's warm-up and ramp, and the device noise's (if any)."""
    schedules = []
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        schedules.append(models.AlphaSchedule(config.alpha_warmup_epochs, config.alpha_ramp_epochs))
    if config.device_noise_warmup_epochs or config.device_noise_ramp_epochs:
        schedules.append(models.AlphaSchedule(config.device_noise_warmup_epochs, config.device_noise_ramp_epochs,
                                              layer=models.DEVICE_NOISE_NAME, weight="noise_scale"))
    return schedules


def model_metrics(config: TrainConfig, split: models.SplitModel, info: data.DatasetInfo,
                  wire: str = "float32") -> dict:
    """What metrics.json says of the model and its data: the cut, what the device sends (and its bound on a
    ``wire`` format), the input, the network and the classes."""
    return {
        "activation_shape": list(split.activation_shape),
        **sent_size(split),
        **split.bound_report(info.num_classes, wire),
        "input_shape": list(info.image_shape),
        "network": os.path.basename(config.model_file) if config.model_file else config.arch,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "data_source": info.source,
    }


def sent_size(split: models.SplitModel) -> dict:
    """What the device sends and computes: bytes per image (int8 and float32) and the client's share of FLOPs."""
    values = int(np.prod(split.activation_shape))
    client, server = models.flops(split.client), models.flops(split.server)
    return {"activation_bytes_int8": values, "activation_bytes_float32": 4 * values, "client_flops": client,
            "server_flops": server, "client_flops_share": client / max(client + server, 1)}


def train_and_evaluate(config: TrainConfig, model_dir: str | None = None) -> dict:
    """Trains (or resumes) a NoPeek split model, evaluates it and writes ``model_dir``.

    One custom training loop (:mod:`nopeek_tf.training.loop`) serves every strategy.

    Args:
      config: the run's settings; arch and cut may be "auto".
      model_dir: where checkpoints, logs, the model and metrics.json go;
        None for runs/<dataset>_<arch>_<cut>_alpha<alpha>.

    Returns:
      The metrics written to metrics.json.

    Raises:
      nopeek_tf.config.ConfigError: a setting cannot work (the message names the flag).
      nopeek_tf.training.data.DatasetError: the dataset cannot be loaded.
    """
    run = start_run(config, model_dir)
    keras.utils.set_random_seed(run.config.seed)
    split, trainer = build_model(run)
    print(describe(run, split), flush=True)
    test_ds = data.make_pipeline(run.raw.test, run.config.batch_size, False, run.config.seed)
    epochs_run, seconds = fit(run, split, trainer, test_ds)
    distribute.peers_met(run.strategy)
    metrics = {
        **run.config.to_json(),
        **evaluate(run, split, trainer, test_ds),
        **model_metrics(run.config, split, run.raw.info),
        "replicas": run.strategy.num_replicas_in_sync,
        "written_by": distribute.task_name(run.strategy),
        "epochs_run_now": epochs_run,
        "train_seconds_now": round(seconds, 2),
    }
    if run.chief:
        model_dir_lib.save_model(run.model_dir, split.full, metrics)
        print(f"test accuracy {metrics['test_accuracy']:.4f}, test dCor {metrics['test_dcor']:.4f} "
              f"(mean over batches of {metrics['dcor_batch_size']}); one request reveals at most "
              f"{bound.bits_text(metrics['bound_bits'])} bits about an image (the class takes "
              f"{metrics['label_bits']:.2f}); wrote {run.model_dir}", flush=True)
    else:
        print(f"{distribute.task_name(run.strategy)}: not the chief, wrote no files", flush=True)
    print(f"weights fingerprint {distribute.weights_fingerprint(split.full)}", flush=True)
    warn_if_collapsed(metrics, run.config.strict)
    return metrics


def warn_if_collapsed(metrics: dict, strict: bool) -> None:
    """Prints the one-line warning of a model at chance (:mod:`collapse`); ``strict``: raises it instead."""
    message = collapse.collapse_message(metrics)
    if message and strict:
        raise collapse.TrainingCollapsed(f"--strict: {message}")
    if message:
        print(f"warning: {message}", flush=True)
