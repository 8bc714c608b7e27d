"""One training loop for every tf.distribute strategy: the custom step behind ``train_and_evaluate``.

The same code runs on one device, under ``MirroredStrategy`` (several local
devices) and under ``MultiWorkerMirroredStrategy`` (several machines), which
Keras 3's ``fit`` cannot (keras-team/keras#20585). Each replica runs

    loss = mean cross-entropy over the global batch + (NoPeek losses of the model) / replicas

and the optimizer (built under the strategy) sums the replicas' gradients. The
NoPeek loss is the model's own ``add_loss`` term (:class:`nopeek_tf.core.models.NoPeekLayer`),
read from ``model.losses``: it is written once. The layer computes dCor over the
global batch (it gathers every replica's images and activations); the gather's
gradient sums the replicas' upstream gradients, which is why each replica adds
only ``1 / replicas`` of it. The first step then equals the single-device step
on the same global batch (tests/distribute_test.py).

Data: every worker builds the same shuffled stream (same seed) and takes its
shard of it (``distribute_datasets_from_function``); each step's global batch is
the same set of images as the single-device batch. Checkpoints: every worker
saves (saving runs collectives), the chief into the model dir, the others into a
temporary folder; all restore from the model dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import attacks
from nopeek_tf.training import data

from nopeek_tf import files

from nopeek_tf.core import models

BATCH_NORM_REFRESH_BATCHES = 50  # training batches that re-estimate the BN statistics after each epoch
BATCH_NORM_REFRESH_MOMENTUM = 0.9
CHECKPOINT_STATE = "epoch.json"  # in the checkpoint folder: the last finished epoch (for people and tests)


@dataclasses.dataclass
class Adversary:
    """Attacker-aware training: a decoder that learns to reconstruct the images from the activations
    during training, and a penalty on the client for how well it does.

    The client's loss gains ``weight * mean(max(0, SSIM(decoder(activations), image) - threshold))``;
    the decoder, at the same step, takes an Adam step on its MSE with the activations held fixed.
    The score of this in-loop decoder is not the leakage: fresh decoders trained after
    training (nopeek_tf.attacks) judge the defence.

    Attributes:
      weight: the penalty's weight.
      threshold: the SSIM below which the client is not penalised (near the label-only floor).
      width: the decoder's filters.
      class_means: for a label-aware decoder, the mean training image of each class [classes, H, W, C]
        (the decoder gets the mean of the true class); None for a decoder of the activations alone.
      learning_rate: the decoder's Adam learning rate.
    """

    weight: float
    threshold: float = 0.4
    width: int = 32
    class_means: np.ndarray | None = None
    learning_rate: float = 1e-3


@dataclasses.dataclass
class EpochLogs:
    """Sums over one pass, reduced over every replica; ``as_dict`` gives the means Keras would log."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    dcor_sum: float = 0.0
    dcor_weight: float = 0.0
    adversary_ssim_sum: float | None = None

    def add(self, values: dict) -> None:
        if "adversary_ssim" in values:
            self.adversary_ssim_sum = (self.adversary_ssim_sum or 0.0) + float(values["adversary_ssim"])
        self.loss_sum += float(values["loss"]) * float(values["count"])
        self.correct += float(values["correct"])
        self.count += float(values["count"])
        self.dcor_sum += float(values["dcor"])
        self.dcor_weight += float(values["dcor_weight"])

    def as_dict(self) -> dict[str, float]:
        logs = {"loss": self.loss_sum / max(self.count, 1.0), "accuracy": self.correct / max(self.count, 1.0),
                "dcor": self.dcor_sum / max(self.dcor_weight, 1.0)}
        if self.adversary_ssim_sum is not None:
            logs["adversary_ssim"] = self.adversary_ssim_sum / max(self.count, 1.0)
        return logs


class Trainer:
    """Trains a split model's full model with a custom step under any strategy.

    Args:
      split: the split model, built under ``strategy.scope()``.
      strategy: the tf.distribute strategy (the default strategy for one device).
      learning_rate: Adam's learning rate.
      mixed_precision: wrap the optimizer in a loss-scale optimizer (mixed_float16).
      optimizer: another optimizer class than Adam (e.g. ``keras.optimizers.SGD``), called with the learning rate.
      adversary: attacker-aware training (:class:`Adversary`), or None.
    """

    def __init__(self, split: models.SplitModel, strategy: tf.distribute.Strategy, learning_rate: float,
                 mixed_precision: bool = False, optimizer=None, adversary: Adversary | None = None):
        self.split = split
        self.model = split.full
        self.strategy = strategy
        self.nopeek = split.full.get_layer(models.NOPEEK_NAME)
        with strategy.scope():
            optimizer = (optimizer or keras.optimizers.Adam)(learning_rate)
            if mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
        self.optimizer = optimizer
        self.adversary = adversary
        self.decoder = self.decoder_optimizer = self._class_means = None
        if adversary is not None:
            self._build_adversary(adversary)
        self._cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self._train_step = tf.function(self._distributed_step)
        self._refresh_step = None
        self._evaluate_step = tf.function(self._local_evaluate_step)

    def _build_adversary(self, adversary: Adversary) -> None:
        # The decoder and its SSIM stay float32 under mixed precision.
        with models.dtype_policy("float32"), self.strategy.scope():
            self.decoder = attacks.build_decoder(self.split.activation_shape, self.model.input_shape[1:],
                                                 adversary.width, label_aware=adversary.class_means is not None)
            self.decoder_optimizer = keras.optimizers.Adam(adversary.learning_rate)
            self.decoder_optimizer.build(self.decoder.trainable_variables)
        if adversary.class_means is not None:
            self._class_means = tf.constant(adversary.class_means, tf.float32)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    # --- Data -------------------------------------------------------------------------------

    def distribute(self, raw: tf.data.Dataset, batch_size: int, seed: int, image_size=None):
        """The shuffled training stream, each worker's shard of it, batched per replica.

        With several replicas the last incomplete batch is dropped (every replica
        must get a batch in every step).
        """
        distributed = self.replicas > 1

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            shard = (context.num_input_pipelines, context.input_pipeline_id) if context.num_input_pipelines > 1 else None
            return data.make_pipeline(raw, context.get_per_replica_batch_size(batch_size), True, seed, image_size,
                                      drop_remainder=distributed, shard=shard)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def steps_per_epoch(self, examples: int, batch_size: int) -> int:
        """Steps of one epoch: every batch on one replica; only full global batches with several."""
        return examples // batch_size if self.replicas > 1 else math.ceil(examples / batch_size)

    # --- Steps ------------------------------------------------------------------------------

    def _replica_step(self, images, labels):
        # Tensors from a distributed iterator have no device under MultiWorkerMirroredStrategy,
        # and the NoPeek layer's all_gather refuses them; tf.identity places them.
        images, labels = tf.identity(images), tf.identity(labels)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        local_batch = tf.shape(images)[0]
        global_batch = local_batch * replicas
        variables = self.model.trainable_variables
        logs = {}
        with tf.GradientTape(persistent=self.decoder is not None) as tape:
            if self.decoder is None:
                logits = self.model(images, training=True)
            else:  # the full model's graph, step by step, to reach the activations the decoder reads
                activations = self.split.send(images, training=True)
                logits = self.split.server(self.nopeek([images, activations], training=True), training=True)
            task = tf.nn.compute_average_loss(self._cross_entropy(labels, logits), global_batch_size=global_batch)
            penalties = self.model.losses
            penalty = tf.add_n(penalties) if penalties else tf.zeros([], tf.float32)
            loss = task + tf.cast(penalty, task.dtype) / replicas
            if self.decoder is not None:
                decoder_loss, hinge, ssim = self._adversary_losses(images, labels, activations, global_batch)
                loss += self.adversary.weight * hinge
                logs["adversary_ssim"] = tf.reduce_sum(ssim)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        if self.decoder is not None:
            decoder_variables = self.decoder.trainable_variables
            self.decoder_optimizer.apply_gradients(zip(tape.gradient(decoder_loss, decoder_variables),
                                                       decoder_variables))
        dcor, dcor_weight = self.nopeek.last_dcor()
        return {"loss": loss, "correct": self._correct(logits, labels),
                "count": tf.cast(local_batch, tf.float32), "dcor": dcor / replicas,
                "dcor_weight": dcor_weight / replicas, **logs}

    def _adversary_losses(self, images, labels, activations, global_batch):
        """(the decoder's MSE on fixed activations, the client's hinge on its SSIM, per-image SSIM)."""
        activations = tf.cast(activations, tf.float32)
        inputs = [activations] if self._class_means is None else [activations, tf.gather(self._class_means, labels)]
        reconstructions = self.decoder(inputs if len(inputs) > 1 else inputs[0], training=True)
        fixed = [tf.stop_gradient(part) for part in inputs]
        decoded = self.decoder(fixed if len(fixed) > 1 else fixed[0], training=True)
        decoder_mse = tf.reduce_mean(tf.square(decoded - images), axis=[1, 2, 3])
        ssim = tf.image.ssim(images, reconstructions, max_val=1.0)
        hinge = tf.nn.relu(ssim - self.adversary.threshold)
        return (tf.nn.compute_average_loss(decoder_mse, global_batch_size=global_batch),
                tf.nn.compute_average_loss(hinge, global_batch_size=global_batch), ssim)

    @staticmethod
    def _correct(logits, labels):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32))

    def _distributed_step(self, iterator):
        per_replica = self.strategy.run(self._replica_step, args=next(iterator))
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in per_replica.items()}

    def train_step(self, iterator) -> dict:
        """One step on the next global batch of a distributed iterator; the logs reduced over replicas.

        ``loss`` is the global batch's mean cross-entropy plus the NoPeek term,
        ``count`` its size, ``correct`` the right predictions, ``dcor`` its dCor.
        """
        return self._train_step(iterator)

    def _local_evaluate_step(self, images, labels):
        logits = self.model(images, training=False)
        dcor, dcor_weight = self.nopeek.last_dcor()
        count = tf.cast(tf.shape(images)[0], tf.float32)
        return {"loss": tf.reduce_mean(self._cross_entropy(labels, logits)), "correct": self._correct(logits, labels),
                "count": count, "dcor": dcor, "dcor_weight": dcor_weight}

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """Loss (cross-entropy), accuracy and mean batch dCor on a batched dataset, on this worker alone.

        Every worker holds the same weights, so no collective is needed: the
        chief's figures are everyone's.
        """
        logs = EpochLogs()
        for images, labels in dataset:
            logs.add(self._evaluate_step(images, labels))
        return logs.as_dict()

    # --- Batch normalisation -----------------------------------------------------------------

    def refresh_batch_norm(self, distributed_dataset, batches: int = BATCH_NORM_REFRESH_BATCHES) -> None:
        """Re-estimates the batch-normalisation moving statistics under the current weights.

        Training moves the weights faster than the moving averages follow, most of all in short runs from
        scratch (a MobileNetV2 after one Fashion-MNIST epoch classified every test image as one class at
        inference while it scored 0.78 on batch statistics). Forward passes in training mode over
        ``batches`` training batches, with momentum 0.9, bring the statistics to the final weights
        (Precise BN). Nothing trainable changes. A model without batch normalisation is left alone.
        """
        layers = batch_norm_layers(self.model)
        if not layers:
            return
        with refresh_momentum(layers):
            if self._refresh_step is None:
                def forward(images, labels):
                    images = tf.identity(images)
                    self.split.server(self.split.send(images, training=True), training=True)
                    return tf.zeros([])

                self._refresh_step = tf.function(lambda iterator: self.strategy.run(forward, args=next(iterator)))
            iterator = iter(distributed_dataset)
            for _ in range(batches):
                try:
                    self._refresh_step(iterator)
                except (StopIteration, tf.errors.OutOfRangeError):
                    break

    # --- Epochs -------------------------------------------------------------------------------

    def train_epoch(self, distributed_dataset, steps: int, before_step=None) -> dict[str, float]:
        """Runs ``steps`` steps on a fresh iterator of ``distributed_dataset``; returns the epoch's means.

        ``before_step(step)`` runs in Python before each step (the alpha schedule).
        """
        logs = EpochLogs()
        iterator = iter(distributed_dataset)
        for step in range(steps):
            if before_step is not None:
                before_step(step)
            logs.add(self.train_step(iterator))
        return logs.as_dict()


def batch_norm_layers(model: keras.Model) -> list:
    """The BatchNormalization layers of ``model`` (nested models included)."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


@contextlib.contextmanager
def refresh_momentum(layers: list):
    """Sets the batch-normalisation ``layers``' momentum to the refresh's (Precise BN), then restores it."""
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = BATCH_NORM_REFRESH_MOMENTUM
    try:
        yield
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


class Checkpoints:
    """The model's and optimizer's state after every epoch, saved by every worker, kept by the chief.

    Args:
      directory: the model dir's checkpoint folder (shared, or the chief's).
      trainer: what to save (its model, optimizer and decoder), unless ``parts`` says.
      writer: True on the chief; the other workers save into a temporary folder
        (saving runs collectives that every worker must join) and delete it.
      parts: what to save instead of a trainer's (``model`` and any other trackables by name).
    """

    def __init__(self, directory: str, trainer: Trainer | None = None, writer: bool = True,
                 parts: dict | None = None):
        self.directory = directory
        self.writer = writer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        if parts is None:  # a trainer's model, optimizer and (attacker-aware training) decoder
            parts = dict(model=trainer.model, optimizer=trainer.optimizer)
            if trainer.decoder is not None:
                parts.update(adversary=trainer.decoder, adversary_optimizer=trainer.decoder_optimizer)
        # The model's non-trainable variables are listed too: the random-seed states of its dropout layers
        # are not reached through the model object, and a resumed run must draw the same dropout masks.
        parts = dict(parts, epoch=self.epoch, states=list(parts["model"].non_trainable_variables))
        self.checkpoint = tf.train.Checkpoint(**parts)

    def restore(self) -> int:
        """Restores the last saved epoch's state if there is one; returns the number of finished epochs."""
        latest = tf.train.latest_checkpoint(self.directory) if os.path.isdir(self.directory) else None
        if latest is None:
            return 0
        self.checkpoint.restore(latest).expect_partial()
        return int(self.epoch.numpy())

    def save(self, finished_epochs: int) -> None:
        """Saves the state after ``finished_epochs`` epochs (the chief keeps only the latest)."""
        self.epoch.assign(finished_epochs)
        folder = self.directory if self.writer else tempfile.mkdtemp(prefix="nopeek-worker-checkpoint-")
        try:
            manager = tf.train.CheckpointManager(self.checkpoint, folder, max_to_keep=1)
            manager.save(checkpoint_number=finished_epochs)
            if self.writer:
                files.write_json(os.path.join(folder, CHECKPOINT_STATE), {"epoch": finished_epochs})
        finally:
            if not self.writer:
                shutil.rmtree(folder, ignore_errors=True)


def progress_line(steps: int, seconds: float, logs: dict[str, float]) -> str:
    """The Keras-style line printed after an epoch: ``12/12 - 3s - 250ms/step - accuracy: ... - loss: ...``."""
    values = " - ".join(f"{name}: {value:.4f}" for name, value in sorted(logs.items()))
    return f"{steps}/{steps} - {seconds:.0f}s - {1000 * seconds / max(steps, 1):.0f}ms/step - {values}"


def skip_epochs(distributed_dataset, epochs: int) -> None:
    """Advances the shuffle of ``distributed_dataset`` past ``epochs`` epochs (each new iterator reshuffles).

    A resumed run then sees the same batches in each epoch as an uninterrupted one.
    """
    for _ in range(epochs):
        iter(distributed_dataset)

