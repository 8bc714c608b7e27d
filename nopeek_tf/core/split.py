"""Splitting your own Keras model at a named layer: :func:`split_model`, :func:`list_cuts`.

Any Keras 3 functional or Sequential model works, nested models included (a
``keras.applications`` network inside a Sequential, say): nested models are
inlined into one graph whose layers are the user's own layer objects, so the
user's weights are kept (a pretrained model fine-tunes with NoPeek).

A *cut* is the name of the last layer that runs on the device. It is valid when
that layer's output is the only tensor that crosses from the client to the
server. Inside a residual block the skip connection crosses too, and
:func:`split_model` refuses such a cut with one line that names the crossing
tensors and the nearest valid cuts before and after.

Example:
  >>> net = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=10)
  >>> [cut.name for cut in list_cuts(net)][:3]
  ['Conv1', 'bn_Conv1', 'Conv1_relu']
  >>> split = split_model(net, "block_3_project_BN", alpha=1.0)
  >>> split.client.output_shape
  (None, 4, 4, 16)

A model that ends in softmax gives logits to the split model (the softmax is
left out), as the loss and the server's signatures expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import keras

from nopeek_tf.config import Defence
from nopeek_tf.core import models

# keras.applications networks that the command line builds by name (any other
# keras.applications builder name works too; these are the ones tested).
APPLICATIONS = ("MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0")


BATCH_NORM_MOMENTUM = 0.99  # of keras.applications networks trained from scratch (build_application)


class CutError(ValueError):
    """A cut that cannot split the model; the message contains the word "cut" and says why."""


@dataclasses.dataclass(frozen=True)
class Cut:
    """A valid cut of a model, with what the device sends and computes there.

    Attributes:
      name: the layer's name (the last layer on the client).
      shape: the activations of one sample at the cut.
      values: the values sent per image (the product of ``shape``).
      client_flops: multiply-adds x 2 per image on the client.
      client_flops_share: the client's share of the model's FLOPs.
    """

    name: str
    shape: tuple[int, ...]
    values: int
    client_flops: int
    client_flops_share: float


@dataclasses.dataclass
class _Node:
    """One call of a layer in the flattened graph."""

    operation: Any
    arguments: Any
    inputs: list  # KerasTensors read
    outputs: list  # KerasTensors written


class Graph:
    """A model's computation as one flat list of layer calls in topological order (nested models inlined).

    Args:
      model: a built Keras functional or Sequential model with one input and one output.

    Raises:
      CutError: the model has several inputs or outputs, or is a subclassed model without a graph.
    """

    def __init__(self, model: keras.Model):
        model = _functional(model)
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise CutError(f"cut: the model must have one image input and one output, it has "
                           f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
        self.model = model
        self.input = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="image")
        self.nodes: list[_Node] = []
        (self.output,) = _inline(model, [self.input], self.nodes)
        self.producer = {id(tensor): index for index, node in enumerate(self.nodes) for tensor in node.outputs}
        self._ancestors: dict[int, frozenset[int]] = {}
        self.live = sorted(self.ancestors(self.producer[id(self.output)]))
        self.node_flops = [_node_flops(node) for node in self.nodes]

    @property
    def layer_names(self) -> list[str]:
        """Every layer's name, in the order the graph runs them."""
        return [self.nodes[index].operation.name for index in self.live]

    def node_of(self, name: str) -> int:
        """The index of the one call of layer ``name``; CutError if it is not a layer of the model."""
        found = [index for index in self.live if self.nodes[index].operation.name == name]
        if not found:
            raise CutError(f"cut {name!r} is not a layer of the model; its layers are {', '.join(self.layer_names)}")
        if len(found) > 1:
            raise CutError(f"cut {name!r}: the layer is called {len(found)} times in the model; cut at a layer "
                           f"called once")
        if len(self.nodes[found[0]].outputs) != 1:
            raise CutError(f"cut {name!r}: the layer has {len(self.nodes[found[0]].outputs)} outputs; cut at a "
                           f"layer with one")
        return found[0]

    def ancestors(self, index: int) -> frozenset[int]:
        """The calls the output of call ``index`` depends on, itself included."""
        if index not in self._ancestors:
            result = {index}
            for tensor in self.nodes[index].inputs:
                if id(tensor) in self.producer:
                    result |= self.ancestors(self.producer[id(tensor)])
            self._ancestors[index] = frozenset(result)
        return self._ancestors[index]

    def crossing(self, index: int) -> list[str]:
        """The tensors (named by the layer that makes them) that the server half would need from the client."""
        client = self.ancestors(index)
        names = []
        for server_index in self.live:
            if server_index in client:
                continue
            for tensor in self.nodes[server_index].inputs:
                producer = self.producer.get(id(tensor))
                if producer is None or producer in client:
                    name = "the input image" if producer is None else self.nodes[producer].operation.name
                    if name not in names:
                        names.append(name)
        if self.producer.get(id(self.output)) in client:
            names = [self.nodes[index].operation.name, "the model's output"]
        return names

    def is_valid(self, index: int) -> bool:
        """True if call ``index``'s output is the only tensor that crosses to the server."""
        return self.crossing(index) == [self.nodes[index].operation.name]

    def cut(self, index: int) -> Cut:
        """The :class:`Cut` at call ``index`` (which must be valid)."""
        shape = tuple(int(d) for d in self.nodes[index].outputs[0].shape[1:])
        client = sum(self.node_flops[i] for i in self.ancestors(index))
        total = sum(self.node_flops[i] for i in self.live)
        return Cut(self.nodes[index].operation.name, shape, math.prod(shape), client, client / max(total, 1))

    def valid_cuts(self) -> list[Cut]:
        """Every valid cut, in the order the graph runs them."""
        return [self.cut(index) for index in self.live if self.is_valid(index)]

    def default_cut(self) -> str:
        """The valid cut whose client share of the FLOPs is the largest at or below one half (else the first)."""
        cuts = self.valid_cuts()
        if not cuts:
            raise CutError("cut: the model has no valid cut (every layer's output is crossed by another tensor)")
        halves = [cut for cut in cuts if cut.client_flops_share <= 0.5]
        return (halves[-1] if halves else cuts[0]).name

    def input_scale_warning(self) -> str | None:
        """A warning when the model rescales its input as if pixels were 0..255 (nopeek-tf feeds [0, 1])."""
        for index in self.live[:3]:
            layer = self.nodes[index].operation
            scale = getattr(layer, "scale", None) if isinstance(layer, keras.layers.Rescaling) else None
            if isinstance(scale, (int, float)) and scale < 0.05:
                return (f"warning: the model's layer {layer.name} rescales its input by {scale:g}, as for pixels "
                        "in 0..255; nopeek-tf feeds pixels in [0, 1] (the device does the same), so a pretrained "
                        "model sees inputs 255 times smaller than it learnt from")
        return None

    def check_cut(self, name: str) -> int:
        """The index of cut ``name``; CutError names the crossing tensors and the nearest valid cuts."""
        index = self.node_of(name)
        crossing = self.crossing(index)
        if crossing == [name]:
            return index
        if crossing and crossing[-1] == "the model's output":
            raise CutError(f"cut {name!r} leaves nothing to the server; cut at an earlier layer")
        position = self.live.index(index)
        before = next((self.nodes[i].operation.name for i in reversed(self.live[:position]) if self.is_valid(i)),
                      None)
        after = next((self.nodes[i].operation.name for i in self.live[position + 1:] if self.is_valid(i)), None)
        others = [tensor for tensor in crossing if tensor != name]
        raise CutError(f"cut {name!r} is crossed by other tensors: the server would also need the output of "
                       f"{', '.join(others)} (a skip connection); the nearest valid cuts are {before or 'none'} "
                       f"before and {after or 'none'} after")

    def replay(self, indices: Sequence[int], known: dict[int, Any]) -> None:
        """Calls the layers of ``indices`` in order on the tensors of ``known`` (id -> tensor); adds their outputs."""
        for index in indices:
            node = self.nodes[index]
            args, kwargs = node.arguments.fill_in(known)
            outputs = keras.tree.flatten(node.operation(*args, **kwargs))
            known.update({id(old): new for old, new in zip(node.outputs, outputs)})


def _functional(model: keras.Model) -> keras.Model:
    """``model`` as a functional model (a Sequential's own graph); CutError for a model without one."""
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "_functional", None):
            raise CutError("cut: the Sequential model has no input shape; start it with keras.Input(shape=...)")
        return model._functional
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "outputs", None):
        raise CutError(f"cut: {type(model).__name__} is a subclassed model without a graph; split a functional "
                       "or Sequential model")
    return model


def _inline(model: keras.Model, inputs: list, nodes: list[_Node]) -> list:
    """Replays ``model`` on ``inputs`` symbolically, appending each primitive layer call to ``nodes``."""
    model = _functional(model)
    known = {id(old): new for old, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(known)
            if isinstance(node.operation, keras.Model):
                outputs = _inline(node.operation, [known[id(tensor)] for tensor in node.input_tensors], nodes)
            else:
                outputs = keras.tree.flatten(node.operation(*args, **kwargs))
                new_node = node.operation._inbound_nodes[-1]
                nodes.append(_Node(node.operation, new_node.arguments, list(new_node.input_tensors), outputs))
            known.update({id(old): new for old, new in zip(node.outputs, outputs)})
    return [known[id(tensor)] for tensor in model.outputs]


def _node_flops(node: _Node) -> int:
    """Multiply-adds x 2 of one sample through one layer call."""
    if not node.inputs or not node.outputs:
        return 0
    return models.call_flops(node.operation, node.inputs[0].shape, node.outputs[0].shape)


def _is_softmax(activation) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def _is_softmax_layer(layer) -> bool:
    """A Softmax layer, or a layer whose activation is softmax."""
    return isinstance(layer, keras.layers.Softmax) or _is_softmax(getattr(layer, "activation", None))


def _logits_layer(layer):
    """For a layer that ends in softmax: a copy that stops before it (None: the layer is the softmax itself)."""
    if isinstance(layer, keras.layers.Softmax) or (isinstance(layer, keras.layers.Activation)
                                                    and _is_softmax(layer.activation)):
        return None
    config = {**layer.get_config(), "activation": "linear", "name": f"{layer.name}_logits"}
    return type(layer).from_config(config)


def ends_in_softmax(model: keras.Model) -> bool:
    """True if the model's last layer is a softmax (a Softmax layer, or a layer with activation="softmax")."""
    graph = Graph(model)
    return _is_softmax_layer(graph.nodes[graph.producer[id(graph.output)]].operation)


def input_scale_warning(model: keras.Model) -> str | None:
    """A warning when the model rescales its input as if pixels were 0..255 (nopeek-tf feeds [0, 1]), else None."""
    return Graph(model).input_scale_warning()


def list_cuts(model: keras.Model) -> list[Cut]:
    """Every valid cut of ``model``: its layers whose output is the only tensor that crosses to the server.

    Raises:
      CutError: the model cannot be split (several inputs or outputs, no graph).
    """
    return Graph(model).valid_cuts()


def default_cut(model: keras.Model) -> str:
    """The valid cut whose client share of the FLOPs is the largest at or below one half (else the first)."""
    return Graph(model).default_cut()


def split_model(model: keras.Model, cut: str | None = None, defence: Defence | None = None,
                **settings) -> models.SplitModel:
    """Splits a Keras model at layer ``cut`` into NoPeek's client half, NoPeek layer and server half.

    The halves call the user's own layer objects, so they start from (and train)
    the user's weights: before training, ``split.full(x)`` equals ``model(x)``
    (the logits, for a model that ends in softmax).

    Example:
      >>> halves = split_model(model, cut="block_5_add", defence=Defence(alpha=1.0, bottleneck=4))
      >>> halves = split_model(model, cut="block_5_add", alpha=1.0, bottleneck=4)  # the same

    Args:
      model: a functional or Sequential Keras model (nested models allowed), image in, class scores out.
      cut: the name of the last layer on the client; None for :func:`default_cut`.
      defence: what protects what the client sends (:class:`nopeek_tf.config.Defence`): ``alpha`` (the dCor
        weight; 0 trains without NoPeek but still logs dCor), ``bottleneck`` (if > 0, the client ends with a
        linear 1x1 convolution, dense after a flat cut, to this many channels, and the server starts with one
        back to the cut's channels), ``bounded`` (the bottleneck ends in tanh: every value sent in [-1, 1]),
        ``device_noise`` (with ``bounded``, the stddev of the Gaussian noise the device adds, trained with it),
        the noise baseline (``noise``, ``noise_scale``). None: no defence.
      **settings: Defence fields by name, applied over ``defence``.

    Returns:
      A :class:`nopeek_tf.core.models.SplitModel` whose ``full`` model outputs logits.

    Raises:
      CutError: ``cut`` is not a layer of the model, or is crossed by a skip connection (the message
        names the tensors that cross and the nearest valid cuts before and after).
    """
    defence = models.checked_defence(defence, settings)
    bottleneck, bounded = defence.bottleneck, defence.bounded
    graph = Graph(model)
    index = graph.check_cut(cut or graph.default_cut())
    client_nodes = sorted(graph.ancestors(index))
    server_nodes = [i for i in graph.live if i not in graph.ancestors(index)]
    cut_tensor = graph.nodes[index].outputs[0]

    image = keras.Input(shape=graph.input.shape[1:], dtype=graph.input.dtype, name="image")
    known = {id(graph.input): image}
    graph.replay(client_nodes, known)
    sent = known[id(cut_tensor)]
    if bottleneck:
        sent = models.bottleneck_layer(bottleneck, len(sent.shape), bounded=bounded)(sent)
    client = keras.Model(image, sent, name=models.CLIENT_NAME)

    activations = keras.Input(shape=client.output_shape[1:], name="activations")
    start = activations
    if bottleneck:
        start = models.expand_layer(cut_tensor.shape[-1], len(cut_tensor.shape))(activations)
    known = {id(cut_tensor): start}
    last = graph.producer[id(graph.output)]
    head = graph.nodes[last].operation
    softmax = _is_softmax_layer(head)
    graph.replay([i for i in server_nodes if not (softmax and i == last)], known)
    if softmax:
        logits_layer = _logits_layer(head)
        args, kwargs = graph.nodes[last].arguments.fill_in(known)
        if logits_layer is None:
            logits = args[0]
        else:
            logits = logits_layer(*args, **kwargs)
            logits_layer.set_weights(head.get_weights())
    else:
        logits = known[id(graph.output)]
    server = keras.Model(activations, logits, name=models.SERVER_NAME)
    return models.assemble_split(client, server, defence, name=f"nopeek_{_safe_name(model.name)}_{cut}")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def build_application(name: str, input_shape: Sequence[int], num_classes: int,
                      options: dict[str, Any] | None = None) -> keras.Model:
    """A ``keras.applications`` network by name, with random weights (nothing downloads), ending in logits.

    Args:
      name: a ``keras.applications`` builder, e.g. "MobileNetV2", "MobileNetV3Small", "EfficientNetB0".
      input_shape: one image's shape (height, width, channels).
      num_classes: the classes of the top layer.
      options: the builder's own keyword arguments, e.g. ``{"alpha": 0.35}`` for MobileNet.

    Its batch normalisation layers get momentum :data:`BATCH_NORM_MOMENTUM` (Keras's default) instead of
    the applications' 0.999, so that short runs from scratch infer with settled statistics.

    Raises:
      ValueError: an unknown name or an option the builder does not take (the message names it).
    """
    builder = getattr(keras.applications, name, None)
    if not callable(builder) or name[:1].islower():
        raise ValueError(f"unknown keras.applications network {name!r}; e.g. {', '.join(APPLICATIONS)}")
    kwargs = dict(input_shape=tuple(input_shape), weights=None, classes=num_classes, classifier_activation=None)
    if name.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = False  # pixels arrive in [0, 1], not [0, 255]
    kwargs.update(options or {})
    try:
        network = builder(**kwargs)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # keras.applications use momentum 0.999 (for long ImageNet runs): after a few epochs from scratch the
            # moving statistics are still near their start and inference fails; Keras's default fits short runs.
            layer.momentum = BATCH_NORM_MOMENTUM
    return network


def parse_options(text: Sequence[str] | None) -> dict[str, Any]:
    """``["alpha=0.35", "minimalistic=true"]`` -> ``{"alpha": 0.35, "minimalistic": True}``.

    Values become numbers, booleans or text.
    """
    options = {}
    for item in text or ():
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--arch_options takes NAME=VALUE pairs, got {item!r}")
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
            continue
        for kind in (int, float):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            options[key] = value
    return options


def load_model_file(path: str) -> keras.Model:
    """Loads a saved Keras model (without its optimizer); CutError says why a file cannot be used."""
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors, TypeError for unknown layers
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CutError(f"--model_file {path} cannot be loaded as a Keras model, so there is nothing to cut "
                       f"({text})") from None
