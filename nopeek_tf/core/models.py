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
  >>> split = build_split_model("mnist_cnn", (28, 28, 1), 10, cut="conv2", defence=Defence(alpha=3.0))
  >>> split.client.output_shape
  (None, 14, 14, 32)
"""


from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Sequence

import keras
import numpy as np

from nopeek_tf.config import AUTO_WARMUP_SHARE, Defence
from nopeek_tf.core.architectures import ARCHITECTURES, Architecture, get_architecture, resolve_cut  # noqa: F401
from nopeek_tf.core.layers import (  # noqa: F401  (the model's layers and their names, importable from here)
    BOTTLENECK_NAME, BOUNDED_NAME, CLIENT_NAME, DCOR_METRIC_NAME, DEVICE_NOISE_NAME, NOISE_NAME, NOPEEK_NAME,
    SERVER_NAME, ActivationNoise, AlphaSchedule, DeviceNoise, DistanceCorrelationLoss, NoPeekLayer)
from nopeek_tf.device import bound


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

    def warmup(self, epochs: float) -> AlphaSchedule:
        """The Keras callback that warms NoPeek up in ``fit`` as ``train.train`` does by default: alpha 0 for the
        first :data:`nopeek_tf.config.AUTO_WARMUP_SHARE` of ``epochs``, then a ramp over as many (without it,
        alpha * dCor can win before the task starts: a model at chance).

        Example:
          >>> halves.full.fit(images, labels, epochs=10, callbacks=[halves.warmup(epochs=10)])
        """
        share = AUTO_WARMUP_SHARE * epochs
        return AlphaSchedule(warmup_epochs=share, ramp_epochs=share)

    def sent_activations(self, images, batch_size: int = 256):
        """What the device sends for ``images`` (numpy), as numpy, computed in batches."""
        return np.concatenate([keras.ops.convert_to_numpy(self.send(images[start:start + batch_size]))
                               for start in range(0, len(images), batch_size)])


def build_split_model(arch: str, input_shape: Sequence[int], num_classes: int, cut: str | None = None,
                      defence: Defence | None = None, **settings) -> SplitModel:
    """Builds a NoPeek split model.

    Args:
      arch: a name in :data:`ARCHITECTURES`.
      input_shape: one image's shape, (height, width, channels).
      num_classes: number of classes; the server outputs that many logits.
      cut: the last block on the client; None or "auto" for the default.
      defence: what protects what the client sends (:class:`nopeek_tf.config.Defence`): ``alpha`` (the dCor
        weight; 0 trains without NoPeek but still logs dCor), ``client_width`` (multiplies the filters and
        units of the client's blocks; the server's stay as they are), ``bottleneck`` (the client ends with a
        linear layer to this many channels: a 1x1 convolution, or units after a dense cut; the server starts
        from them), ``bounded`` (the bottleneck ends in tanh: every value sent lies in [-1, 1]),
        ``device_noise`` (with ``bounded``, the stddev of the Gaussian noise the device adds, trained with
        it) and the noise baseline (``noise``, ``noise_scale``). None: no defence.
      **settings: Defence fields by name, applied over ``defence`` (``alpha=3.0``).

    Returns:
      A :class:`SplitModel`; ``full`` is uncompiled and outputs logits.

    Raises:
      ValueError: for an unknown architecture or cut, a negative alpha or a client_width <= 0.
    """
    defence = checked_defence(defence, settings)
    client_width, bottleneck, bounded = defence.client_width, defence.bottleneck, defence.bounded
    cut = resolve_cut(arch, cut)
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
    return assemble_split(client, server, defence, name=f"nopeek_{arch}_{cut}")


def checked_defence(defence: Defence | None, settings: dict) -> Defence:
    """``defence`` (default: none) with ``settings`` applied, checked (ConfigError, a ValueError, naming the field)."""
    defence = dataclasses.replace(defence or Defence(), **settings)
    if defence.client_width <= 0:
        raise ValueError(f"client_width must be positive, got {defence.client_width:g}")
    defence.validate()
    return defence


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


def assemble_split(client: keras.Model, server: keras.Model, defence: Defence, name: str = "nopeek") -> SplitModel:
    """The trainable full model ``server(nopeek([image, noise(client(image))]))`` of two halves.

    Args:
      client: image -> activations (a model named "client").
      server: activations -> logits (a model named "server").
      defence: its ``alpha`` weighs the dCor loss; its noise baseline (:class:`ActivationNoise`) or device noise
        (:class:`DeviceNoise`, on what a bounded client sends) is added to what the client sends.
      name: the full model's name.
    """
    full_input = keras.Input(shape=client.input_shape[1:], name="image")
    sent = client(full_input)
    noise_layer = device_noise_layer = None
    if defence.noise_baseline is not None:
        noise_layer = ActivationNoise(*defence.noise_baseline, name=NOISE_NAME, dtype="float32")
        sent = noise_layer(sent)
    if defence.device_noise:
        device_noise_layer = DeviceNoise(defence.device_noise, name=DEVICE_NOISE_NAME, dtype="float32")
        sent = device_noise_layer(sent)
    # float32 policy: under mixed precision, dCor is still computed from float32 inputs.
    cut_activations = NoPeekLayer(defence.alpha, name=NOPEEK_NAME, dtype="float32")([full_input, sent])
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
