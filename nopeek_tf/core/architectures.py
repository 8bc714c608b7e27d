"""The built-in architectures: named blocks in order, cut after any of them.

Each architecture is an ordered list of named blocks; the cut is the name of
the last block that runs on the client. A block builds fresh layers each time
it is applied, and works for any input size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras


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
