"""The network a config names: the architecture and cut resolved for a dataset's shape, the split model built.

The runner (:mod:`nopeek_tf.training.runner`) and both sides of split training build their model here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

from nopeek_tf.config import BUILT_IN_ARCHITECTURES, ConfigError, TrainConfig, default_arch
from nopeek_tf.core import models
from nopeek_tf.core import split as split_lib
from nopeek_tf.training import data


def _built_in_cut(arch: str, cut: str) -> str:
    """A built-in architecture's cut by name ("auto": its default); ConfigError naming --cut."""
    try:
        return models.resolve_cut(arch, cut)
    except ValueError as error:
        raise ConfigError(f"--cut: {error}") from None


def check_network(config: TrainConfig) -> None:
    """The checks that need the network's definition: a built-in arch's cut, a keras.applications name."""
    if config.arch in BUILT_IN_ARCHITECTURES:
        _built_in_cut(config.arch, config.cut)
    elif config.arch != "auto" and not config.model_file:
        if config.arch[:1].islower() or not callable(getattr(keras.applications, config.arch, None)):
            raise ConfigError(f"--arch: unknown architecture {config.arch!r}; choose auto, one of "
                              f"{', '.join(BUILT_IN_ARCHITECTURES)}, or a keras.applications network "
                              "(MobileNetV2, MobileNetV3Small, EfficientNetB0, ...)")


def with_arch(config: TrainConfig, image_shape: Sequence[int]) -> TrainConfig:
    """Replaces arch/cut "auto" with the dataset's default built-in architecture and its default cut."""
    if config.user_model:
        return config
    arch = config.arch if config.arch != "auto" else default_arch(config.dataset, image_shape)
    return config.replace(arch=arch, cut=_built_in_cut(arch, config.cut))


def resolve_network(config: TrainConfig, image_shape: Sequence[int], num_classes: int) -> TrainConfig:
    """Arch and cut resolved for the data's shape and classes (built-in, --model_file or keras.applications)."""
    return resolve_user_cut(with_arch(config, image_shape), image_shape, num_classes)


def model_file_input(config: TrainConfig) -> tuple[tuple[int, int], int]:
    """The (image size, channels) of ``--model_file``'s input; ConfigError when the flags disagree with it."""
    try:
        shape = split_lib.load_model_file(config.model_file).input_shape
    except split_lib.CutError as error:
        raise ConfigError(str(error)) from None
    if len(shape) != 4 or None in shape[1:]:
        raise ConfigError(f"--model_file {config.model_file} takes input {shape}; it must take images of a fixed "
                          "size (batch, height, width, channels)")
    size, channels = tuple(shape[1:3]), shape[3]
    if config.image_size and tuple(config.image_size) != size:
        raise ConfigError(f"--image_size {config.image_size[0]}x{config.image_size[1]} does not match --model_file's "
                          f"input {size[0]}x{size[1]}")
    if config.channels and config.channels != channels:
        raise ConfigError(f"--channels {config.channels} does not match --model_file's input ({channels} channels)")
    return size, channels


def resolve_user_cut(config: TrainConfig, shape, num_classes: int) -> TrainConfig:
    """For --model_file or a keras.applications arch: checks the model and its cut, resolves cut "auto"."""
    if not config.user_model:
        return config
    try:
        network = load_network(config, shape, num_classes)
    except ValueError as error:
        raise ConfigError(f"--arch_options: {error}" if config.arch_options else f"--arch: {error}") from None
    outputs = network.output_shape[-1]
    if outputs != num_classes:
        raise ConfigError(f"--model_file outputs {outputs} classes; the dataset has {num_classes}")
    try:
        graph = split_lib.Graph(network)
        warning = graph.input_scale_warning()
        if warning:
            print(warning, flush=True)
        cut = graph.default_cut() if config.cut in ("", "auto") else config.cut
        graph.check_cut(cut)
    except split_lib.CutError as error:
        raise ConfigError(f"--cut: {error}") from None
    return config.replace(cut=cut)


def load_network(config: TrainConfig, input_shape: Sequence[int], num_classes: int) -> keras.Model | None:
    """The user's network of a config: its ``--model_file``, or the ``keras.applications`` ``--arch`` built for
    ``input_shape`` and ``num_classes``; None for a built-in arch."""
    if config.model_file:
        return split_lib.load_model_file(config.model_file)
    if not config.user_model:
        return None
    return split_lib.build_application(config.arch, input_shape, num_classes,
                                       split_lib.parse_options(config.arch_options))


def build_split(config: TrainConfig, input_shape: Sequence[int], num_classes: int, alpha: float | None = None
                ) -> models.SplitModel:
    """The split model a config describes (arch or model file, cut, its :class:`nopeek_tf.config.Defence`).

    Args:
      config: the run's settings, arch and cut resolved.
      input_shape: one image's shape.
      num_classes: the classes.
      alpha: overrides the defence's alpha (0 for a plain classifier of the same network).
    """
    defence = config.protection if alpha is None else dataclasses.replace(config.protection, alpha=alpha)
    network = load_network(config, input_shape, num_classes)
    if network is None:
        return models.build_split_model(config.arch, input_shape, num_classes, config.cut, defence)
    return split_lib.split_model(network, config.cut, defence)


def valid_cuts(config: TrainConfig, input_shape: Sequence[int], num_classes: int) -> list[split_lib.Cut]:
    """Every valid cut of a config's network with what the device sends and computes there: a user's network's
    from its graph, a built-in architecture's by building it at each of its cuts (no defence)."""
    network = load_network(config, input_shape, num_classes)
    if network is not None:
        return split_lib.Graph(network).valid_cuts()
    cuts = []
    for cut in models.get_architecture(config.arch).cuts:
        split = models.build_split_model(config.arch, input_shape, num_classes, cut)
        client, server = models.flops(split.client), models.flops(split.server)
        cuts.append(split_lib.Cut(cut, split.activation_shape, int(np.prod(split.activation_shape)), client,
                                  client / max(client + server, 1)))
    return cuts


def cuts_table(config: TrainConfig) -> str:
    """The valid cuts of ``--model_file`` (or a keras.applications ``--arch``) as a table (``--list_cuts``)."""
    config = config.with_defence()
    config.validate()
    check_network(config)
    if config.model_file:
        try:
            network = split_lib.load_model_file(config.model_file)
        except split_lib.CutError as error:
            raise ConfigError(str(error)) from None
    elif config.user_model:
        raw = data.load(config.dataset, config.data_dir, config.image_size, config.channels or None,
                        config.test_fraction)
        network = load_network(config, raw.info.image_shape, raw.info.num_classes)
    else:
        architecture = models.get_architecture(with_arch(config, data.load(config.dataset, config.data_dir)
                                                  .info.image_shape).arch)
        return (f"{architecture.name} (built in) cuts after its blocks: {', '.join(architecture.cuts)} "
                f"(default {architecture.default_cut})")
    try:
        graph = split_lib.Graph(network)
        cuts, default = graph.valid_cuts(), graph.default_cut()
    except split_lib.CutError as error:
        raise ConfigError(f"--model_file: {error}") from None
    lines = [f"{network.name}: {len(cuts)} valid cuts of {len(graph.layer_names)} layers "
             f"(* the default)", f"  {'cut':34s} {'activations':>14s} {'values sent':>11s} {'client FLOPs':>12s}"]
    for cut in cuts:
        shape = "x".join(map(str, cut.shape))
        lines.append(f"{'*' if cut.name == default else ' '} {cut.name:34s} {shape:>14s} {cut.values:11d} "
                     f"{100 * cut.client_flops_share:11.1f}%")
    return "\n".join(lines)
