"""Reconstruction attacks on the activations a client sends, and how well they work.

One entry point, :func:`run_attacks`, over typed inputs and results (in the
manner of tensorflow/privacy's membership-inference attacks). The attacks:

* ``leaked_pairs`` (the NoPeek paper's): the attacker holds a leaked share of
  the (image, activation) pairs of the test split, trains a decoder on them and
  is scored on the other test images.
* ``public_client``: the client ships to devices, so the attacker can run it on
  any data of the same kind (here: the training split, never the scored
  images), train a decoder on as many pairs as it likes, and reconstruct the
  scored test images from their activations.
* ``inversion``: with the client's weights, the attacker searches for the image
  whose activations match the observed ones (gradient descent on the input with
  a total-variation prior).

Every attack is scored on the same held-out test images: MSE, PSNR, SSIM
(``tf.image.ssim``, max_val 1), and whether a classifier trained on raw images
still recognises the reconstructions. The leakage figure of a client is the
worst case: the highest SSIM over the attacks.

With the attacker's labels, the report also holds a reference that is not an
attack: ``label_only``, each scored image replaced by the mean of the
attacker's images of its class. A client accurate enough for the task lets
the server (and so a decoder) tell the class, so a defence that keeps accuracy
cannot push the attacks much below this reference.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf.config import AttackBudget  # noqa: F401  (the attacks' budget; defined with its flags)
from nopeek_tf.dcor import mean_batch_dcor

ATTACKS = ("leaked_pairs", "public_client", "inversion")


@dataclasses.dataclass
class AttackInput:
    """What the attacks need.

    Attributes:
      client: the deployed client as the attacker can run it: float images in
        [0, 1] [N, H, W, C] -> the activations the device sends (float; an int8
        client's activations dequantized). For the noise baseline it includes
        the noise.
      client_model: the client's weights as a differentiable Keras model (what a
        public .tflite gives away), for the inversion attack; None skips it.
      train_images: the attacker's auxiliary images of the same kind (never scored).
      test_images: the victims' images, float [0, 1].
      test_labels: their classes, for the recogniser.
      recognizer: a separate classifier trained on raw images (image -> logits), or
        None. Not the attacked model: it would recognise an inversion from the
        very activations the inversion matched.
      train_labels: the auxiliary images' classes, for the ``label_only``
        reference; None leaves it out.
    """

    client: Callable[[np.ndarray], np.ndarray]
    client_model: keras.Model | None
    train_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    recognizer: keras.Model | None = None
    train_labels: np.ndarray | None = None


@dataclasses.dataclass
class AttackResult:
    """One attack's score on the held-out test images."""

    attack: str
    mse: float
    psnr: float
    ssim: float
    recognized_accuracy: float | None
    scored_images: int
    budget: str
    reconstructions: np.ndarray = dataclasses.field(repr=False, default=None)

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        values.pop("reconstructions")
        return values


@dataclasses.dataclass
class LeakageReport:
    """All attacks' results and the worst case."""

    results: list[AttackResult]
    scored_indices: np.ndarray = dataclasses.field(repr=False, default=None)
    label_only: AttackResult | None = None

    @property
    def worst(self) -> AttackResult:
        """The attack with the highest SSIM: the client leaks at least this much."""
        return max(self.results, key=lambda result: result.ssim)

    def to_json(self) -> dict:
        return {"worst_attack": self.worst.attack, "worst_ssim": self.worst.ssim,
                "worst_psnr": self.worst.psnr, "attacks": [r.to_json() for r in self.results],
                "label_only": self.label_only.to_json() if self.label_only else None}


def image_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> tuple[float, float, float]:
    """Mean (MSE, PSNR in dB, SSIM) of reconstructions against originals, images in [0, 1]."""
    originals = tf.constant(originals, tf.float32)
    reconstructions = tf.clip_by_value(tf.constant(reconstructions, tf.float32), 0.0, 1.0)
    mse = tf.reduce_mean(tf.square(originals - reconstructions), axis=[1, 2, 3])
    psnr = tf.image.psnr(originals, reconstructions, max_val=1.0)
    ssim = tf.image.ssim(originals, reconstructions, max_val=1.0)
    # A perfect reconstruction has an infinite PSNR: cap it at 100 dB.
    return float(tf.reduce_mean(mse)), float(tf.reduce_mean(tf.minimum(psnr, 100.0))), float(tf.reduce_mean(ssim))


def build_decoder(activation_shape: Sequence[int], image_shape: Sequence[int], width: int = 64) -> keras.Model:
    """A convolutional upsampling decoder: activations -> image in [0, 1]."""
    activations = keras.Input(tuple(activation_shape))
    height, image_width, channels = image_shape
    if len(activation_shape) == 3:
        x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(activations)
    else:
        start = (max(1, height // 4), max(1, image_width // 4))
        x = keras.layers.Dense(start[0] * start[1] * 2 * width, activation="relu")(
            keras.layers.Flatten()(activations))
        x = keras.layers.Reshape((*start, 2 * width))(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    while x.shape[1] < height or x.shape[2] < image_width:
        x = keras.layers.UpSampling2D(2)(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = keras.layers.Resizing(height, image_width)(x)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    return keras.Model(activations, keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x))


def train_decoder(activations: np.ndarray, images: np.ndarray, budget: AttackBudget, seed: int) -> keras.Model:
    """Trains a decoder from activations to images with MSE, to convergence within the budget.

    A tenth of the pairs is held out to tell convergence: the learning rate
    halves when their loss stalls for 3 epochs, training stops after 6, and
    the best weights are kept.
    """
    keras.utils.set_random_seed(seed)
    decoder = build_decoder(activations.shape[1:], images.shape[1:], budget.decoder_width)
    decoder.compile(optimizer=keras.optimizers.Adam(budget.decoder_learning_rate), loss="mse")
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = order[:len(images) // 10] if len(images) >= 50 else order[:0]
    fitted = order[len(held_out):]
    watched = "val_loss" if len(held_out) else "loss"
    decoder.fit(activations[fitted], images[fitted], batch_size=budget.decoder_batch_size,
                epochs=budget.decoder_epochs, shuffle=True, verbose=0,
                validation_data=(activations[held_out], images[held_out]) if len(held_out) else None,
                callbacks=[keras.callbacks.ReduceLROnPlateau(watched, factor=0.5, patience=3, min_lr=1e-5),
                           keras.callbacks.EarlyStopping(watched, patience=6, restore_best_weights=True)])
    return decoder


def class_means(images: np.ndarray, labels: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each label in ``wanted``, the mean of ``images`` of that class (the overall mean if none)."""
    overall = images.mean(axis=0)
    means = {label: images[labels == label].mean(axis=0) for label in np.unique(labels)}
    return np.stack([means.get(label, overall) for label in wanted]).astype(np.float32)


def total_variation(images: tf.Tensor) -> tf.Tensor:
    """Mean absolute difference of neighbouring pixels (an image prior)."""
    dy = tf.abs(images[:, 1:, :, :] - images[:, :-1, :, :])
    dx = tf.abs(images[:, :, 1:, :] - images[:, :, :-1, :])
    return tf.reduce_mean(dy) + tf.reduce_mean(dx)


def invert(client_model: keras.Model, activations: np.ndarray, image_shape: Sequence[int],
           budget: AttackBudget) -> np.ndarray:
    """Images whose client activations match ``activations`` (Adam on the input, TV prior)."""
    target = tf.constant(activations, tf.float32)
    logits = tf.Variable(tf.zeros([len(activations), *image_shape]))
    optimizer = keras.optimizers.Adam(budget.inversion_learning_rate)
    scale = tf.reduce_mean(tf.square(target)) + 1e-8

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            images = tf.sigmoid(logits)
            predicted = tf.cast(client_model(images, training=False), tf.float32)
            loss = (tf.reduce_mean(tf.square(predicted - target)) / scale
                    + budget.inversion_tv_weight * total_variation(images))
        optimizer.apply_gradients([(tape.gradient(loss, logits), logits)])
        return loss

    for _ in range(budget.inversion_steps):
        step()
    return tf.sigmoid(logits).numpy()


def _recognized(recognizer: keras.Model | None, reconstructions: np.ndarray, labels: np.ndarray) -> float | None:
    if recognizer is None:
        return None
    # Called eagerly: predict() would retrace for every new batch shape the attacks produce.
    predicted = np.concatenate([keras.ops.convert_to_numpy(recognizer(reconstructions[start:start + 256],
                                                                      training=False)).argmax(axis=1)
                                for start in range(0, len(reconstructions), 256)])
    return float(np.mean(predicted == labels))


def run_attacks(data: AttackInput, budget: AttackBudget | None = None, attacks: Sequence[str] = ATTACKS,
                seed: int = 0) -> LeakageReport:
    """Runs the reconstruction attacks on a client and scores them on the same held-out test images.

    The test split is divided with ``seed``: ``budget.leaked_fraction`` of it is
    the leaked-pairs attacker's training data; every attack is scored on the
    rest (the inversion on at most ``budget.inversion_images`` of them).

    Returns:
      A :class:`LeakageReport`; ``report.worst`` is the leakage figure.
    """
    budget = budget or AttackBudget()
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {', '.join(ATTACKS)}")
    count = len(data.test_images)
    order = np.random.default_rng(seed).permutation(count)
    leaked_count = int(round(budget.leaked_fraction * count))
    leaked, scored = order[:leaked_count], order[leaked_count:]
    if len(scored) == 0 or len(leaked) == 0:
        raise ValueError(f"leaked_fraction {budget.leaked_fraction} leaves no leaked or no scored test images")
    test_activations = data.client(data.test_images)
    originals = data.test_images[scored]
    decoder_budget = (f"decoder: up to {budget.decoder_epochs} epochs (early stop on 10% held out), "
                      f"batch {budget.decoder_batch_size}, Adam {budget.decoder_learning_rate:g}, "
                      f"width {budget.decoder_width}")
    results = []

    def score(name: str, reconstructions: np.ndarray, indices: np.ndarray, budget_text: str) -> AttackResult:
        mse, psnr, ssim = image_metrics(data.test_images[indices], reconstructions)
        result = AttackResult(name, mse, psnr, ssim,
                              _recognized(data.recognizer, reconstructions, data.test_labels[indices]),
                              len(indices), budget_text, reconstructions)
        results.append(result)
        return result

    if "leaked_pairs" in attacks:
        decoder = train_decoder(test_activations[leaked], data.test_images[leaked], budget, seed)
        score("leaked_pairs", decoder.predict(test_activations[scored], verbose=0), scored,
              f"{len(leaked)} leaked test pairs; {decoder_budget}")
    if "public_client" in attacks:
        decoder = train_decoder(data.client(data.train_images), data.train_images, budget, seed)
        score("public_client", decoder.predict(test_activations[scored], verbose=0), scored,
              f"{len(data.train_images)} pairs made with the public client; {decoder_budget}")
    if "inversion" in attacks and data.client_model is not None:
        chosen = scored[:budget.inversion_images]
        reconstructions = invert(data.client_model, test_activations[chosen], originals.shape[1:], budget)
        score("inversion", reconstructions, chosen,
              f"client weights; {budget.inversion_steps} Adam steps at {budget.inversion_learning_rate:g}, "
              f"TV weight {budget.inversion_tv_weight:g}")
    label_only = None
    if data.train_labels is not None:
        label_only = score("label_only", class_means(data.train_images, data.train_labels, data.test_labels[scored]),
                           scored, "not an attack: the mean of the attacker's images of the true class")
        results.remove(label_only)
    return LeakageReport(results, scored, label_only)


def quick_attack_ssim(activations: np.ndarray, images: np.ndarray, ridge: float = 1e-2) -> float:
    """A fast leaked-pairs attack for monitoring: ridge regression from activations to pixels.

    Fits on the first half of the pairs, scores SSIM on the second half. Far
    weaker than :func:`run_attacks`; use it to follow a trend, not as the leakage figure.
    """
    half = len(images) // 2
    features = activations.reshape(len(activations), -1).astype(np.float64)
    features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    targets = images.reshape(len(images), -1).astype(np.float64)
    a, b = features[:half], targets[:half]
    # Dual form: (A A^T + r I)^-1 is small (half x half) even for wide activations.
    weights = a.T @ np.linalg.solve(a @ a.T + ridge * np.eye(half), b)
    predicted = np.clip(features[half:] @ weights, 0.0, 1.0).reshape(images[half:].shape)
    return image_metrics(images[half:], predicted)[2]


class LeakageCallback(keras.callbacks.Callback):
    """Logs the test dCor and a quick attack's SSIM each epoch (TensorBoard and the epoch logs).

    Args:
      send: what the device sends for a numpy image batch, as numpy (e.g.
        ``SplitModel.sent_activations``: the client half, plus its noise if any).
      images: test images, float [0, 1] (a few hundred are plenty).
      dcor_batch_size: batch size of the dCor.
      log_dir: TensorBoard folder (a "leakage" run is written there), or None.
    """

    def __init__(self, send: Callable[[np.ndarray], np.ndarray], images: np.ndarray, dcor_batch_size: int = 100,
                 log_dir: str | None = None):
        super().__init__()
        self.send = send
        self.images = images
        self.dcor_batch_size = dcor_batch_size
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None

    def on_epoch_end(self, epoch, logs=None):
        activations = np.asarray(self.send(self.images))
        values = {"test_dcor": mean_batch_dcor(self.images, activations, self.dcor_batch_size)[0],
                  "quick_attack_ssim": quick_attack_ssim(activations, self.images)}
        if logs is not None:
            logs.update(values)
        if self.writer is not None:
            with self.writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(f"leakage/{name}", value, step=epoch)
            self.writer.flush()
