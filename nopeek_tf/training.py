"""Training a NoPeek split model end to end: ``train_and_evaluate(config, model_dir)``.

``python -m train.train`` parses its flags into a :class:`nopeek_tf.config.TrainConfig`
and calls :func:`train_and_evaluate`; tests and the sweep call it directly.
Writes to the model dir: config.json (the settings; a run started again with the
same settings resumes after the last finished epoch), checkpoints/, logs/
(TensorBoard: loss, accuracy, dcor), model.keras and metrics.json.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import data, distribute, models
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.config import TrainConfig
from nopeek_tf.dcor import mean_batch_dcor


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
    width = f" (client width x{config.client_width:g})" if config.client_width != 1 else ""
    schedule = ""
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        schedule = f" (0 for {config.alpha_warmup_epochs:g} epochs, then a {config.alpha_ramp_epochs:g}-epoch ramp)"
    if config.noise != "none":
        schedule += f"; {config.noise} noise x{config.noise_scale:g}"
    return (f"{info.name}: {info.num_train} train / {info.num_test} test images {run.input_shape}, "
            f"{info.num_classes} classes; {config.arch} cut after {config.cut}{width} -> activations "
            f"{split.activation_shape}; alpha {config.alpha:g}{schedule}; "
            f"{run.strategy.num_replicas_in_sync} replica(s), global batch {config.batch_size}"
            + ("; mixed_float16" if config.mixed_precision else ""))


def start_run(config: TrainConfig, model_dir: str | None) -> Run:
    """Checks the settings, makes the strategy, loads the data, resolves arch/cut and prepares the model dir."""
    config.validate()
    strategy = distribute.make_strategy(config)  # first: multi-worker set-up must precede other TensorFlow work
    chief = distribute.is_chief(strategy)
    raw = data.load(config.dataset, config.data_dir)
    shape = data.input_shape(raw.info, config.image_size)
    config = config.with_arch(shape)
    model_dir = model_dir or model_dir_lib.default_path(config)
    model_dir_lib.prepare(model_dir, config, writer=chief)
    return Run(config, model_dir, strategy, chief, raw, tuple(shape))


def build_model(run: Run) -> models.SplitModel:
    """The compiled split model, built under the run's strategy (and dtype policy)."""
    config = run.config
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with run.strategy.scope():
            noise = (config.noise, config.noise_scale) if config.noise != "none" else None
            split = models.build_split_model(config.arch, run.input_shape, run.raw.info.num_classes, config.cut,
                                             config.alpha, noise=noise, client_width=config.client_width)
            split.full.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return split


def make_callbacks(run: Run, split: models.SplitModel) -> list[keras.callbacks.Callback]:
    """Checkpoints (every task restores, the chief saves), the alpha schedule, leakage and TensorBoard logs."""
    config = run.config
    callbacks = [distribute.ChiefBackupAndRestore(os.path.join(run.model_dir, model_dir_lib.CHECKPOINT_DIR),
                                                  writer=run.chief)]
    if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
        callbacks.append(models.AlphaSchedule(config.alpha_warmup_epochs, config.alpha_ramp_epochs))
    if run.chief and config.leakage_images:
        from nopeek_tf import attacks

        images = test_images(run, config.leakage_images)
        callbacks.append(attacks.LeakageCallback(split.sent_activations, images, config.dcor_batch_size,
                                                 os.path.join(run.model_dir, model_dir_lib.LOG_DIR, "leakage")))
    if run.chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run.model_dir, model_dir_lib.LOG_DIR)))
    return callbacks


def test_images(run: Run, limit: int | None = None) -> np.ndarray:
    """The (first ``limit``) test images as the model sees them, float [0, 1]."""
    split = run.raw.test if limit is None else run.raw.test.take(limit)
    batches = data.make_pipeline(split, 1000, False, 0, run.config.image_size)
    return np.concatenate([images.numpy() for images, _ in batches])


def evaluate(run: Run, split: models.SplitModel, test_ds) -> dict:
    """Test accuracy and loss, and the mean test dCor of what the client sends."""
    evaluation = split.full.evaluate(test_ds, return_dict=True, verbose=0)
    images = test_images(run)
    test_dcor, dcor_batch_size = mean_batch_dcor(images, split.sent_activations(images), run.config.dcor_batch_size)
    return {"test_accuracy": float(evaluation["accuracy"]), "test_loss": float(evaluation["loss"]),
            "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size}


def train_and_evaluate(config: TrainConfig, model_dir: str | None = None) -> dict:
    """Trains (or resumes) a NoPeek split model, evaluates it and writes ``model_dir``.

    Args:
      config: the run's settings; arch and cut may be "auto".
      model_dir: where checkpoints, logs, the model and metrics.json go;
        None for runs/<dataset>_<arch>_<cut>_alpha<alpha>.

    Returns:
      The metrics written to metrics.json.

    Raises:
      nopeek_tf.config.ConfigError: a setting cannot work (the message names the flag).
      nopeek_tf.data.DatasetError: the dataset cannot be loaded.
    """
    run = start_run(config, model_dir)
    config = run.config
    keras.utils.set_random_seed(config.seed)
    distributed = run.strategy.num_replicas_in_sync > 1
    train_ds = data.make_pipeline(run.raw.train, config.batch_size, True, config.seed, config.image_size,
                                  drop_remainder=distributed)
    test_ds = data.make_pipeline(run.raw.test, config.batch_size, False, config.seed, config.image_size)
    split = build_model(run)
    print(describe(run, split), flush=True)

    started = time.time()
    history = split.full.fit(train_ds, validation_data=test_ds, epochs=config.epochs,
                             callbacks=make_callbacks(run, split), shuffle=False, verbose=config.verbose)
    train_seconds = time.time() - started

    metrics = {
        **config.to_json(),
        **evaluate(run, split, test_ds),
        "activation_shape": list(split.activation_shape),
        "input_shape": list(run.input_shape),
        "num_classes": run.raw.info.num_classes,
        "class_names": list(run.raw.info.class_names),
        "data_source": run.raw.info.source,
        "replicas": run.strategy.num_replicas_in_sync,
        "written_by": distribute.task_name(run.strategy),
        "epochs_run_now": len(history.history.get("loss", [])),
        "train_seconds_now": round(train_seconds, 2),
    }
    if run.chief:
        model_dir_lib.save_model(run.model_dir, split.full, metrics)
        print(f"test accuracy {metrics['test_accuracy']:.4f}, test dCor {metrics['test_dcor']:.4f} "
              f"(mean over batches of {metrics['dcor_batch_size']}); wrote {run.model_dir}", flush=True)
    else:
        print(f"{distribute.task_name(run.strategy)}: not the chief, wrote no files", flush=True)
    print(f"weights fingerprint {distribute.weights_fingerprint(split.full)}", flush=True)
    return metrics
