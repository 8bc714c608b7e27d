"""NoPeek split models: a client half, a server half, and the dCor loss at the cut.

The trainable model is ``server(nopeek([image, client(image)]))``:

* ``client`` (a Keras model named "client"): raw image -> activations at the cut;
  this is what runs on the device.
* ``nopeek``: a :class:`NoPeekLayer`, the identity on the
  activations, which adds ``alpha * dCor(image, activations)`` to the loss in
  training and reports the batch dCor as the metric ``dcor``.
* ``server`` (a Keras model named "server"): activations -> class logits.

Both halves are layers of the full model, so they share its weights and are
recovered from a saved ``.keras`` file with :func:`split_halves`.

Example:
  >>> split = build_split_model("mnist_cnn", (28, 28, 1), 10, cut="conv2", alpha=3.0)
  >>> split.client.output_shape
  (None, 14, 14, 32)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf.core.dcor import distance_correlation
from nopeek_tf.device import bound

CLIENT_NAME = "client"
SERVER_NAME = "server"
NOPEEK_NAME = "nopeek"
NOISE_NAME = "noise"
DEVICE_NOISE_NAME = "device_noise"
BOTTLENECK_NAME = "bottleneck"
BOUNDED_NAME = "bottleneck_tanh"
DCOR_METRIC_NAME = "dcor"


@keras.saving.register_keras_serializable(package="nopeek_tf")
class NoPeekLayer(keras.layers.Layer):
    """Identity on the activations that adds ``alpha * dCor(raw, activations)``.

    Called on ``[raw_input, activations]``; returns ``activations`` unchanged.
    In training (``training=True``) it adds the weighted distance correlation
    with ``add_loss``. In training and evaluation it updates the mean metric
    ``dcor`` (shown by ``fit``/``evaluate`` and written to TensorBoard). A batch
    of one sample has no dCor: it adds nothing and does not count in the metric.

    Args:
      alpha: weight of the dCor term; 0 only measures. :class:`AlphaSchedule`
        can warm it up during training.
    """

    def __init__(self, alpha: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        # The share of alpha in force now (1 unless an AlphaSchedule warms it up).
        self.alpha_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="alpha_scale")
        self.dcor_tracker = keras.metrics.Mean(name=DCOR_METRIC_NAME)
        self._loss_threads: dict[int, int] = {}
        self._last_dcor: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}

    def batch_dcor(self, raw: tf.Tensor, activations: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns (dCor of the batch in float32, 1.0 if the batch has >= 2 samples else 0.0).

        Under a ``tf.distribute`` strategy with several replicas, the batch is the
        global batch: raw inputs and activations are gathered from all replicas,
        so every replica computes the same dCor. The gradient of the gather sums
        the replicas' upstream gradients, and Keras divides each replica's loss by
        the replica count, so the summed gradients equal the single-device ones.
        """
        raw = tf.cast(raw, tf.float32)
        activations = tf.cast(activations, tf.float32)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            raw = context.all_gather(raw, axis=0)
            activations = context.all_gather(activations, axis=0)
        static_size = activations.shape[0]
        if static_size is not None:
            if static_size < 2:
                return tf.zeros([], tf.float32), tf.zeros([], tf.float32)
            return distance_correlation(raw, activations), tf.ones([], tf.float32)
        has_pairs = tf.shape(activations)[0] >= 2
        value = tf.cond(
            has_pairs,
            lambda: distance_correlation(raw, activations),
            lambda: tf.zeros([], tf.float32),
        )
        return value, tf.cast(has_pairs, tf.float32)

    def call(self, inputs, training=None):
        raw, activations = inputs
        value, weight = self.batch_dcor(raw, activations)
        if training and self.alpha > 0:
            loss = self.alpha * self.alpha_scale * value * weight
            self.add_loss(loss)
            self._loss_threads[id(loss)] = threading.get_ident()
        self._last_dcor[threading.get_ident()] = (value, weight)
        if not tf.distribute.in_cross_replica_context() or not tf.distribute.has_strategy():
            self.dcor_tracker.update_state(value, sample_weight=weight)
        return activations

    def last_dcor(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(dCor, weight) of this layer's last call in the calling thread (a replica's, under a strategy).

        The custom training loop (:mod:`nopeek_tf.loop`) reads the dCor metric here;
        ``fit`` reads the ``dcor`` metric that the same call updates.
        """
        return self._last_dcor[threading.get_ident()]

    # MirroredStrategy runs the replicas in threads that share this layer, and
    # Keras keeps added losses in one list per layer: without this filter, replica
    # r would also count the dCor losses that replicas 0..r-1 added. These
    # override private Keras methods (Keras is pinned in requirements.txt;
    # tests/private_hooks_test.py fails when they disappear).
    def _get_own_losses(self):
        losses = super()._get_own_losses()
        thread = threading.get_ident()
        return [loss for loss in losses if self._loss_threads.get(id(loss)) in (thread, None)]

    def _clear_losses(self):
        super()._clear_losses()
        thread = threading.get_ident()
        self._loss_threads = {key: owner for key, owner in self._loss_threads.items() if owner != thread}

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs[1].shape, dtype=inputs[1].dtype)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="nopeek_tf")
class DistanceCorrelationLoss(NoPeekLayer):
    """The old name of :class:`NoPeekLayer` (it is a layer, not a loss): ``.keras`` files saved with it still load."""


@keras.saving.register_keras_serializable(package="nopeek_tf")
class ActivationNoise(keras.layers.Layer):
    """Adds noise to each sample's activations, in training and at inference (the noise baseline).

    The noise is relative to the sample's own spread: ``scale * std(z_i) * eps``
    with ``eps`` standard Gaussian or uniform on [-sqrt(3), sqrt(3)] (also unit
    variance). Being relative, the client cannot learn to drown it by scaling
    its activations up, and a device can add it to one sample alone.

    Args:
      kind: "gaussian" or "uniform".
      scale: noise-to-signal ratio of standard deviations.
    """

    KINDS = ("gaussian", "uniform")

    def __init__(self, kind: str = "gaussian", scale: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"noise kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if scale < 0:
            raise ValueError(f"noise scale must be >= 0, got {scale}")
        self.kind, self.scale, self.seed = kind, float(scale), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, activations):
        axes = list(range(1, len(activations.shape)))
        spread = keras.ops.stop_gradient(keras.ops.std(activations, axis=axes, keepdims=True))
        if self.kind == "gaussian":
            eps = keras.random.normal(keras.ops.shape(activations), seed=self.seed_generator)
        else:
            limit = 3.0 ** 0.5
            eps = keras.random.uniform(keras.ops.shape(activations), -limit, limit, seed=self.seed_generator)
        return activations + self.scale * spread * keras.ops.cast(eps, activations.dtype)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package="nopeek_tf")
class DeviceNoise(keras.layers.Layer):
    """What the device does to a bounded client's activations: clip to [-clip, clip], add Gaussian noise.

    ``clip(z, -clip, clip) + stddev * eps``, eps standard Gaussian, in training and at inference, so
    that the server half learns to classify what the device sends. Unlike :class:`ActivationNoise` the
    noise is absolute: with values bounded by ``clip``, it bounds the bits one request carries
    (:mod:`nopeek_tf.device.bound`). The exported client ``.tflite`` holds no noise: the edge client adds
    it with a generator seeded by the operating system. ``noise_scale`` (1 unless a
    :class:`AlphaSchedule` for this layer ramps it up) scales the noise in training only; evaluation
    always adds the full noise.

    Args:
      stddev: the noise's standard deviation.
      clip: the bound on each value.
    """

    def __init__(self, stddev: float = 0.0, clip: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if stddev < 0 or clip <= 0:
            raise ValueError(f"device noise needs stddev >= 0 and clip > 0, got {stddev} and {clip}")
        self.stddev, self.clip, self.seed = float(stddev), float(clip), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.noise_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="noise_scale")

    def call(self, activations, training=None):
        bounded = keras.ops.clip(activations, -self.clip, self.clip)
        eps = keras.ops.cast(keras.random.normal(keras.ops.shape(activations), seed=self.seed_generator),
                             activations.dtype)
        stddev = self.stddev * keras.ops.cast(self.noise_scale, activations.dtype) if training else self.stddev
        return bounded + stddev * eps

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "clip": self.clip, "seed": self.seed}


class AlphaSchedule(keras.callbacks.Callback):
    """Warms the NoPeek weight up: 0 for ``warmup_epochs``, then linear to alpha over ``ramp_epochs``.

    Updated every training step from the optimizer's step count, so a resumed
    run continues the schedule where it stopped. With ``layer=DEVICE_NOISE_NAME``
    and ``weight="noise_scale"`` it ramps the device's noise up the same way.

    Args:
      warmup_epochs: epochs (may be fractional) trained on the task loss alone.
      ramp_epochs: epochs over which alpha then rises linearly to its full value.
      layer: the full model's layer that holds the scale.
      weight: the attribute of that layer holding the scale variable.
    """

    def __init__(self, warmup_epochs: float = 0.0, ramp_epochs: float = 0.0, layer: str = NOPEEK_NAME,
                 weight: str = "alpha_scale"):
        super().__init__()
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError("warm-up and ramp epochs must be >= 0")
        self.warmup_epochs, self.ramp_epochs = warmup_epochs, ramp_epochs
        self.layer, self.weight = layer, weight
        self._last = None
        self._epoch = 0

    def scale_at(self, epoch: float) -> float:
        """The share of alpha in force at a (fractional) epoch."""
        if epoch < self.warmup_epochs:
            return 0.0
        if self.ramp_epochs == 0:
            return 1.0
        return min(1.0, (epoch - self.warmup_epochs) / self.ramp_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def apply(self, full: keras.Model, epoch: float) -> None:
        """Puts the share of alpha at ``epoch`` in force in ``full``'s NoPeek layer (assigned only on change)."""
        scale = self.scale_at(epoch)
        if scale != self._last:
            getattr(full.get_layer(self.layer), self.weight).assign(scale)
            self._last = scale

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")
        # Unknown epoch length: whole-epoch granularity.
        self.apply(self.model, int(self.model.optimizer.iterations.numpy()) / steps if steps else self._epoch)


# --- Architectures --------------------------------------------------------
# Each architecture is an ordered list of named blocks; the cut is the name of
# the last block that runs on the client. A block builds fresh layers each time
# it is applied, and works for any input size.

Block = Callable[[keras.KerasTensor], keras.KerasTensor]


def _conv(name: str, filters: int, pool: bool) -> Block:
    def block(x):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv")(x)
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        return x
    return block


def _dense(name: str, units: int, dropout: float) -> Block:
    def block(x):
        x = keras.layers.Flatten(name=f"{name}_flatten")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
        return keras.layers.Dense(units, activation="relu", name=f"{name}_dense")(x)
    return block


def _residual(name: str, filters: int, stride: int) -> Block:
    """A ResNet-v2 basic block (pre-activation, two 3x3 convolutions)."""
    def block(x):
        shortcut = x
        y = keras.layers.BatchNormalization(name=f"{name}_bn1")(x)
        y = keras.layers.ReLU(name=f"{name}_relu1")(y)
        if stride != 1 or x.shape[-1] != filters:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_proj")(y)
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
        y = keras.layers.ReLU(name=f"{name}_relu2")(y)
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
        return keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return block


def _resnet_stem(name: str, filters: int, _: object = None) -> Block:
    def block(x):
        return keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return block


def _resnet_head(name: str, _width: int = 0, _: object = None) -> Block:
    def block(x):
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
        return keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    return block


# A block: (name, builder, base filters or units, the builder's option: pool, dropout or stride).
BlockSpec = tuple[str, Callable[[str, int, object], Block], int, object]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A split-able network: named blocks in order, and where to cut by default."""

    name: str
    description: str
    default_cut: str
    blocks: tuple[BlockSpec, ...]

    @property
    def cuts(self) -> tuple[str, ...]:
        """The block names the model can be cut after (client = up to and including it)."""
        return tuple(name for name, *_ in self.blocks)

    def make_blocks(self, width: Callable[[str, int], int]) -> list[tuple[str, Block]]:
        """The blocks, each built with ``width(block name, base filters or units)`` filters or units."""
        return [(name, builder(name, width(name, base), option)) for name, builder, base, option in self.blocks]


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "mnist_cnn", "Small CNN for 28x28 grey images (Fashion-MNIST, MNIST); cut conv2 gives 14x14x32.",
            "conv2",
            (("conv1", _conv, 32, False), ("conv2", _conv, 32, True), ("conv3", _conv, 64, True),
             ("dense", _dense, 128, 0.0))),
        Architecture(
            "orl_cnn", "CNN for ORL faces (112x92 grey, or downscaled); cut conv2 gives 28x23x32 at full size.",
            "conv2",
            (("conv1", _conv, 16, True), ("conv2", _conv, 32, True), ("conv3", _conv, 64, True),
             ("conv4", _conv, 128, True), ("dense", _dense, 128, 0.5))),
        Architecture(
            "resnet_small", "ResNet-v2 with 6 basic blocks (16/32/64 filters) for 32x32 RGB (CIFAR-10).",
            "block1b",
            (("stem", _resnet_stem, 16, None), ("block1a", _residual, 16, 1), ("block1b", _residual, 16, 1),
             ("block2a", _residual, 32, 2), ("block2b", _residual, 32, 1), ("block3a", _residual, 64, 2),
             ("block3b", _residual, 64, 1), ("pool", _resnet_head, 0, None))),
    )
}


def get_architecture(name: str) -> Architecture:
    """Returns the registered architecture ``name``; ValueError lists the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def resolve_cut(arch: str, cut: str | None) -> str:
    """Returns ``cut``, or the architecture's default cut when ``cut`` is None or "auto"."""
    architecture = get_architecture(arch)
    if cut in (None, "", "auto"):
        return architecture.default_cut
    if cut not in architecture.cuts:
        raise ValueError(f"unknown cut {cut!r} for {arch}; choose one of {', '.join(architecture.cuts)}")
    return cut


@dataclasses.dataclass
class SplitModel:
    """The trainable full model and its two halves (which share its weights)."""

    full: keras.Model
    client: keras.Model
    server: keras.Model
    noise: ActivationNoise | None = None
    device_noise: DeviceNoise | None = None

    @property
    def activation_shape(self) -> tuple[int, ...]:
        """Shape of one sample's activations at the cut (no batch dimension)."""
        return tuple(self.client.output_shape[1:])

    def send(self, images, training: bool = False):
        """What the device sends for an image batch (a tensor): the client's activations, plus the noise if any."""
        activations = self.client(images, training=training)
        if self.device_noise is not None:
            return self.device_noise(activations, training=training)
        return activations if self.noise is None else self.noise(activations)

    def bound_report(self, num_classes: int, wire: str = "float32") -> dict:
        """The bits one request can reveal (:func:`nopeek_tf.device.bound.bound_report`) on a ``wire`` format."""
        values = int(np.prod(self.activation_shape))
        if self.device_noise is None:
            return bound.bound_report(values, num_classes, wire=wire)
        return bound.bound_report(values, num_classes, self.device_noise.stddev, self.device_noise.clip, wire)

    @property
    def bounded(self) -> bool:
        """True when the client ends in tanh (every value it sends lies in [-1, 1])."""
        return self.client.layers[-1].name == BOUNDED_NAME

    def sent_activations(self, images, batch_size: int = 256):
        """What the device sends for ``images`` (numpy), as numpy, computed in batches."""
        return np.concatenate([keras.ops.convert_to_numpy(self.send(images[start:start + batch_size]))
                               for start in range(0, len(images), batch_size)])


def build_split_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    cut: str | None = None,
    alpha: float = 0.0,
    noise: tuple[str, float] | None = None,
    client_width: float = 1.0,
    bottleneck: int = 0,
    bounded: bool = False,
    device_noise: float = 0.0,
) -> SplitModel:
    """Builds a NoPeek split model.

    Args:
      arch: a name in :data:`ARCHITECTURES`.
      input_shape: one image's shape, (height, width, channels).
      num_classes: number of classes; the server outputs that many logits.
      cut: the last block on the client; None or "auto" for the default.
      alpha: weight of the dCor loss (0 trains without NoPeek but still logs dCor).
      noise: (kind, scale) to add :class:`ActivationNoise` to what the client
        sends (the noise baseline), or None.
      client_width: multiplies the filters and units of the client's blocks
        (the server's stay as they are); below 1 narrows what the client sends.
      bottleneck: if > 0, the client ends with a linear layer to this many
        channels (a 1x1 convolution, or units after a dense cut), no ReLU: the
        client sends fewer values, and the server starts from them.
      bounded: the bottleneck ends in tanh, so every value sent lies in [-1, 1].
      device_noise: with ``bounded``, the stddev of the Gaussian noise the device adds
        (:class:`DeviceNoise`; trained with it); 0 for none.

    Returns:
      A :class:`SplitModel`; ``full`` is uncompiled and outputs logits.

    Raises:
      ValueError: for an unknown architecture or cut, a negative alpha or a client_width <= 0.
    """
    check_bound_settings(bottleneck, bounded, device_noise)
    cut = resolve_cut(arch, cut)
    if client_width <= 0:
        raise ValueError(f"client_width must be positive, got {client_width:g}")
    if bottleneck < 0:
        raise ValueError(f"bottleneck must be >= 0 channels, got {bottleneck}")
    architecture = get_architecture(arch)
    client_blocks = architecture.cuts[:architecture.cuts.index(cut) + 1]

    def width(block: str, base: int) -> int:
        return max(1, round(base * client_width)) if block in client_blocks else base

    blocks = list(architecture.make_blocks(width))
    split_at = len(client_blocks)

    image = keras.Input(shape=tuple(input_shape), name="image")
    x = image
    for _, block in blocks[:split_at]:
        x = block(x)
    cut_shape = x.shape
    if bottleneck:
        x = bottleneck_layer(bottleneck, len(x.shape), bounded=bounded)(x)
    client = keras.Model(image, x, name=CLIENT_NAME)

    activations = keras.Input(shape=client.output_shape[1:], name="activations")
    y = activations
    if bounded:
        # Values in [-1, 1] cannot make large logits through one linear layer: the server first
        # expands them back to the cut's width, with the cut's ReLU.
        y = expand_layer(cut_shape[-1], len(cut_shape), "relu")(y)
    for _, block in blocks[split_at:]:
        y = block(y)
    if len(y.shape) > 2:
        y = keras.layers.Flatten(name="head_flatten")(y)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(y)  # float32 under mixed precision
    server = keras.Model(activations, logits, name=SERVER_NAME)
    return assemble_split(client, server, alpha, noise, name=f"nopeek_{arch}_{cut}", device_noise=device_noise)


def check_bound_settings(bottleneck: int, bounded: bool, device_noise: float) -> None:
    """Raises ValueError unless a bounded client has a bottleneck and device noise has a bounded client."""
    if bounded and not bottleneck:
        raise ValueError("a bounded client needs a bottleneck (the tanh ends it)")
    if device_noise < 0:
        raise ValueError(f"device noise must be >= 0, got {device_noise}")
    if device_noise and not bounded:
        raise ValueError("device noise needs a bounded client (values in [-1, 1]) for its bound to hold")


def bottleneck_layer(channels: int, rank: int, name: str = BOTTLENECK_NAME, bounded: bool = False
                     ) -> Callable[[keras.KerasTensor], keras.KerasTensor]:
    """A layer to ``channels``: a 1x1 convolution for image-shaped activations (rank 4), else dense.

    Linear; when ``bounded``, followed by batch normalisation and tanh, so every value lies in [-1, 1].
    The normalisation keeps the tanh out of saturation when training starts (a saturated tanh passes
    almost no gradient), and its learnt scale lets the client push its values to +-1 as the noise asks.
    """
    linear = pointwise_layer(channels, rank, name)
    if not bounded:
        return linear
    norm = keras.layers.BatchNormalization(name=f"{name}_norm")
    tanh = keras.layers.Activation("tanh", name=BOUNDED_NAME)
    return lambda x: tanh(norm(linear(x)))


def expand_layer(channels: int, rank: int, activation: str | None = None) -> keras.layers.Layer:
    """The server's first layer after a bottleneck: back to the cut's ``channels`` (1x1 convolution or dense)."""
    return pointwise_layer(channels, rank, f"{BOTTLENECK_NAME}_expand", activation)


def pointwise_layer(channels: int, rank: int, name: str, activation: str | None = None) -> keras.layers.Layer:
    """A layer to ``channels`` at each position: a 1x1 convolution for image-shaped activations (rank 4), else dense."""
    if rank == 4:
        return keras.layers.Conv2D(channels, 1, activation=activation, name=name)
    return keras.layers.Dense(channels, activation=activation, name=name)


def assemble_split(client: keras.Model, server: keras.Model, alpha: float = 0.0,
                   noise: tuple[str, float] | None = None, name: str = "nopeek",
                   device_noise: float = 0.0) -> SplitModel:
    """The trainable full model ``server(nopeek([image, noise(client(image))]))`` of two halves.

    Args:
      client: image -> activations (a model named "client").
      server: activations -> logits (a model named "server").
      alpha: weight of the dCor loss.
      noise: (kind, scale) for :class:`ActivationNoise` on what the client sends, or None.
      name: the full model's name.
      device_noise: the stddev of :class:`DeviceNoise` on what a bounded client sends (0: none).
    """
    full_input = keras.Input(shape=client.input_shape[1:], name="image")
    sent = client(full_input)
    noise_layer = device_noise_layer = None
    if noise is not None:
        noise_layer = ActivationNoise(*noise, name=NOISE_NAME, dtype="float32")
        sent = noise_layer(sent)
    if device_noise:
        device_noise_layer = DeviceNoise(device_noise, name=DEVICE_NOISE_NAME, dtype="float32")
        sent = device_noise_layer(sent)
    # float32 policy: under mixed precision, dCor is still computed from float32 inputs.
    cut_activations = NoPeekLayer(alpha, name=NOPEEK_NAME, dtype="float32")([full_input, sent])
    full = keras.Model(full_input, server(cut_activations), name=name)
    return SplitModel(full=full, client=client, server=server, noise=noise_layer, device_noise=device_noise_layer)


@contextlib.contextmanager
def dtype_policy(name: str | None):
    """Builds layers under the Keras dtype policy ``name`` (None: the current one), then restores the global one."""
    previous = keras.config.dtype_policy()
    if name:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def call_flops(layer, input_shape: Sequence[int | None], output_shape: Sequence[int | None]) -> int:
    """Multiply-adds x 2 of one sample through one call of ``layer`` (convolutions and dense layers; 0 otherwise).

    Shapes include the batch dimension. A nested model counts its own layers.
    """
    if isinstance(layer, keras.Model):
        return flops(layer)
    input_shape, output_shape = tuple(input_shape[1:]), tuple(output_shape[1:])
    if None in input_shape or None in output_shape or not input_shape or not output_shape:
        return 0
    outputs = math.prod(output_shape)
    kernel = math.prod(getattr(layer, "kernel_size", (1,)))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2 * outputs * kernel
    if isinstance(layer, keras.layers.SeparableConv2D):
        middle = input_shape[-1] * layer.depth_multiplier
        return 2 * math.prod(output_shape[:-1]) * middle * (kernel + output_shape[-1])
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return 2 * outputs * kernel * input_shape[-1] // max(getattr(layer, "groups", 1), 1)
    if isinstance(layer, keras.layers.Dense):
        return 2 * outputs * input_shape[-1]
    return 0


def flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of one sample through the convolutions and dense layers of ``model`` (nested models too)."""
    graph = model._functional if isinstance(model, keras.Sequential) else model
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if node.operation is None or node.is_input or not node.input_tensors:
                continue
            total += call_flops(node.operation, node.input_tensors[0].shape, node.outputs[0].shape)
    return int(total)


def split_halves(full: keras.Model, client_only: bool = False) -> SplitModel:
    """Recovers the client and server halves (and the noise layers, if any) of a (possibly loaded) full model.

    ``client_only``: ``full`` is a split client's model (image -> what it sends, no server half: :func:`client_side`).
    """
    names = {layer.name for layer in full.layers}
    noise = full.get_layer(NOISE_NAME) if NOISE_NAME in names else None
    device_noise = full.get_layer(DEVICE_NOISE_NAME) if DEVICE_NOISE_NAME in names else None
    return SplitModel(full=full, client=full.get_layer(CLIENT_NAME),
                      server=None if client_only else full.get_layer(SERVER_NAME), noise=noise,
                      device_noise=device_noise)


def client_side(split: SplitModel) -> keras.Model:
    """The device's part of a full model: image -> what it sends (client half, noise, the NoPeek layer)."""
    return keras.Model(split.full.input, split.full.get_layer(NOPEEK_NAME).output, name="client_side")


def nopeek_alpha(full: keras.Model) -> float:
    """The dCor weight of a full model."""
    return full.get_layer(NOPEEK_NAME).alpha
