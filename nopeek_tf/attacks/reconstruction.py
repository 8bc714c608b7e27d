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
* ``public_client_residual``: the same with a second, deeper and wider decoder
  family (residual blocks): a defence tuned against one decoder must hold
  against another.
* ``label_aware``: the server sees the predicted class with every request, so
  this decoder gets the activations *and* the class (the attacker's own images'
  true classes to train; the classes the server predicts for the victims). It
  can always fall back on the class mean, so it scores at least about the
  ``label_only`` reference below.
* ``inversion``: with the client's weights, the attacker searches for the image
  whose activations match the observed ones (gradient descent on the input with
  a total-variation prior).

Every attack is scored on the same held-out test images: MSE, PSNR, SSIM
(``tf.image.ssim``, max_val 1), and whether a classifier trained on raw images
still recognises the reconstructions. The leakage figure of a client is the
worst case: the highest SSIM over the attacks; its headline is the *excess*
over the label-only floor, the leakage a defence that keeps the accuracy can
still remove. Each result states its budget: pairs, decoder epochs run, seconds.

With the attacker's labels, the report also holds a reference that is not an
attack: ``label_only``, each scored image replaced by the mean of the
attacker's images of its class. A client accurate enough for the task lets
the server (and so a decoder) tell the class, so a defence that keeps accuracy
cannot push the attacks much below this reference.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf.config import AttackBudget  # noqa: F401  (the attacks' budget; defined with its flags)
from nopeek_tf.core.dcor import mean_batch_dcor

ATTACKS = ("leaked_pairs", "public_client", "public_client_residual", "label_aware", "inversion")
DECODER_FAMILIES = ("upsampling", "residual")


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
        reference and the ``label_aware`` attack; None leaves both out.
      test_predicted: the classes the server answers for the victims' activations
        (what a label-aware attacker sees); None gives the ``label_aware`` attack
        the true classes instead (the report says which).
    """

    client: Callable[[np.ndarray], np.ndarray]
    client_model: keras.Model | None
    train_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    recognizer: keras.Model | None = None
    train_labels: np.ndarray | None = None
    test_predicted: np.ndarray | None = None


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
    pairs: int | None = None  # (image, activation) pairs the attack trained on
    epochs: int | None = None  # decoder epochs actually run (early stopping)
    seconds: float = 0.0  # wall time of the attack
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

    @property
    def floor_ssim(self) -> float | None:
        """The label-only reference's SSIM: what an accurate classifier leaks by its answer alone."""
        return self.label_only.ssim if self.label_only else None

    @property
    def excess_ssim(self) -> float | None:
        """The worst case above the floor: the leakage a defence can still remove (the headline figure)."""
        return None if self.label_only is None else self.worst.ssim - self.label_only.ssim

    def to_json(self) -> dict:
        return {"worst_attack": self.worst.attack, "worst_ssim": self.worst.ssim,
                "worst_psnr": self.worst.psnr, "floor_ssim": self.floor_ssim, "excess_ssim": self.excess_ssim,
                "attacks": [r.to_json() for r in self.results],
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


def _decoder_start(activations, image_shape, width: int, class_mean=None):
    """The decoder's first feature map: the activations (conv, or dense reshaped to a quarter-size map),
    with the class-mean image, resized to the map, appended as a channel when given."""
    height, image_width, _ = image_shape
    if len(activations.shape) == 4:
        x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(activations)
    else:
        start = (max(1, height // 4), max(1, image_width // 4))
        x = keras.layers.Dense(start[0] * start[1] * 2 * width, activation="relu")(
            keras.layers.Flatten()(activations))
        x = keras.layers.Reshape((*start, 2 * width))(x)
    if class_mean is not None:
        x = keras.layers.Concatenate()([x, keras.layers.Resizing(x.shape[1], x.shape[2])(class_mean)])
    return x


def _residual_block(x, width: int):
    y = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(width, 3, padding="same")(y)
    if x.shape[-1] != width:
        x = keras.layers.Conv2D(width, 1)(x)
    return keras.layers.ReLU()(keras.layers.Add()([x, y]))


def build_decoder(activation_shape: Sequence[int], image_shape: Sequence[int], width: int = 64,
                  family: str = "upsampling", label_aware: bool = False,
                  standardize: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Model:
    """A decoder: activations -> image in [0, 1].

    Families: ``upsampling`` (convolutions and 2x upsampling) and ``residual``
    (twice as wide, two residual blocks at every scale): two architectures, so
    that a defence tuned against one decoder is still judged by another.

    ``label_aware``: a second input, the mean image of the predicted class (the
    attacker's own images of that class), enters the first feature map, and the
    decoder outputs that mean plus a learnt correction that starts at zero: before
    any training it is the label-only reference, and training lowers its error.

    ``standardize``: (mean, variance) of each activation channel, as the attacker
    measures them on its own pairs; the decoder first standardises its input with
    them. Without it, activations of a large scale (std 10 at a MobileNetV2
    block output) stalled the residual family at SSIM 0.07 where it reached 0.54.
    """
    if family not in DECODER_FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; choose from {', '.join(DECODER_FAMILIES)}")
    activations = keras.Input(tuple(activation_shape))
    class_mean = keras.Input(tuple(image_shape)) if label_aware else None
    height, image_width, channels = image_shape
    start = activations
    if standardize is not None:
        start = keras.layers.Normalization(axis=-1, mean=standardize[0], variance=standardize[1])(activations)
    x = _decoder_start(start, image_shape, width, class_mean)
    if family == "upsampling":
        x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
        while x.shape[1] < height or x.shape[2] < image_width:
            x = keras.layers.UpSampling2D(2)(x)
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.Resizing(height, image_width)(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    else:
        x = _residual_block(_residual_block(x, 2 * width), 2 * width)
        while x.shape[1] < height or x.shape[2] < image_width:
            x = keras.layers.UpSampling2D(2)(x)
            x = _residual_block(_residual_block(x, width), width)
        x = keras.layers.Resizing(height, image_width)(x)
        x = _residual_block(x, width)
    if class_mean is None:
        return keras.Model(activations, keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x))
    correction = keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros")(x)
    image = keras.layers.ReLU(max_value=1.0)(keras.layers.Add()([class_mean, correction]))
    return keras.Model([activations, class_mean], image)


def train_decoder(activations: np.ndarray, images: np.ndarray, budget: AttackBudget, seed: int,
                  family: str = "upsampling", class_means: np.ndarray | None = None) -> tuple[keras.Model, int]:
    """Trains a decoder from activations (and, label-aware, class-mean images) to images with MSE.

    The decoder standardises each activation channel with the mean and variance of ``activations``
    (what any attacker can measure on its own pairs).

    A tenth of the pairs is held out to tell convergence: the learning rate
    halves when their loss stalls for 3 epochs, training stops after 6, and
    the best weights are kept.

    Returns:
      (the decoder, the epochs it ran).
    """
    keras.utils.set_random_seed(seed)
    axes = tuple(range(activations.ndim - 1))
    standardize = (activations.mean(axis=axes), np.maximum(activations.var(axis=axes), 1e-12))
    decoder = build_decoder(activations.shape[1:], images.shape[1:], budget.decoder_width, family,
                            label_aware=class_means is not None, standardize=standardize)
    decoder.compile(optimizer=keras.optimizers.Adam(budget.decoder_learning_rate), loss="mse")
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = order[:len(images) // 10] if len(images) >= 50 else order[:0]
    fitted = order[len(held_out):]
    watched = "val_loss" if len(held_out) else "loss"

    def pick(rows):
        return activations[rows] if class_means is None else [activations[rows], class_means[rows]]

    history = decoder.fit(
        pick(fitted), images[fitted], batch_size=budget.decoder_batch_size, epochs=budget.decoder_epochs,
        shuffle=True, verbose=0, validation_data=(pick(held_out), images[held_out]) if len(held_out) else None,
        callbacks=[keras.callbacks.ReduceLROnPlateau(watched, factor=0.5, patience=3, min_lr=1e-5),
                   keras.callbacks.EarlyStopping(watched, patience=6, restore_best_weights=True)])
    return decoder, len(history.history["loss"])


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
                seed: int = 0, progress: Callable[[str], None] | None = None) -> LeakageReport:
    """Runs the reconstruction attacks on a client and scores them on the same held-out test images.

    The test split is divided with ``seed``: ``budget.leaked_fraction`` of it is
    the leaked-pairs attacker's training data; every attack is scored on the
    rest (the inversion on at most ``budget.inversion_images`` of them).
    ``progress``, if given, gets one line as each attack finishes (they take minutes at the full budget).

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
    decoder_budget = (f"decoder on standardised activations, up to {budget.decoder_epochs} epochs (early stop on "
                      "10% held out), "
                      f"batch {budget.decoder_batch_size}, Adam {budget.decoder_learning_rate:g}, "
                      f"width {budget.decoder_width}")
    results = []

    def score(name: str, reconstructions: np.ndarray, indices: np.ndarray, budget_text: str, started: float,
              pairs: int | None = None, epochs: int | None = None) -> AttackResult:
        mse, psnr, ssim = image_metrics(data.test_images[indices], reconstructions)
        result = AttackResult(name, mse, psnr, ssim,
                              _recognized(data.recognizer, reconstructions, data.test_labels[indices]),
                              len(indices), budget_text, pairs, epochs, round(time.time() - started, 1),
                              reconstructions)
        results.append(result)
        if progress is not None and name != "label_only":
            progress(f"  {name}: SSIM {ssim:.3f} after {result.seconds:.0f} s")
        return result

    def decode(name: str, activations: np.ndarray, images: np.ndarray, source: str, family: str = "upsampling",
               labels=None, victims_labels=None) -> None:
        started = time.time()
        means = None if labels is None else class_means(images, labels, labels)
        decoder, epochs = train_decoder(activations, images, budget, seed, family, means)
        inputs = test_activations[scored] if labels is None else [
            test_activations[scored], class_means(images, labels, victims_labels)]
        score(name, decoder.predict(inputs, verbose=0), scored,
              f"{len(images)} {source}; {family} {decoder_budget}; ran {epochs} epochs", started, len(images),
              epochs)

    if "leaked_pairs" in attacks:
        decode("leaked_pairs", test_activations[leaked], data.test_images[leaked], "leaked test pairs")
    source = "pairs made with the public client"
    if {"public_client", "public_client_residual", "label_aware"} & set(attacks):
        train_activations = data.client(data.train_images)  # once, for every public-client decoder
    if "public_client" in attacks:
        decode("public_client", train_activations, data.train_images, source)
    if "public_client_residual" in attacks:
        decode("public_client_residual", train_activations, data.train_images, source, family="residual")
    if "label_aware" in attacks and data.train_labels is not None:
        predicted = data.test_predicted is not None
        victims = (data.test_predicted if predicted else data.test_labels)[scored]
        victims_source = "as the server predicts them" if predicted else "true"
        decode("label_aware", train_activations, data.train_images,
               f"{source} with their classes; victims' classes {victims_source}",
               labels=data.train_labels, victims_labels=victims)
    if "inversion" in attacks and data.client_model is not None:
        started = time.time()
        chosen = scored[:budget.inversion_images]
        reconstructions = invert(data.client_model, test_activations[chosen], originals.shape[1:], budget)
        score("inversion", reconstructions, chosen,
              f"client weights; {budget.inversion_steps} Adam steps at {budget.inversion_learning_rate:g}, "
              f"TV weight {budget.inversion_tv_weight:g}", started)
    label_only = None
    if data.train_labels is not None:
        label_only = score("label_only", class_means(data.train_images, data.train_labels, data.test_labels[scored]),
                           scored, "not an attack: the mean of the attacker's images of the true class", time.time())
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
