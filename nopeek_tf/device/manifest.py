"""The contract between the device and the server: ``manifest.json``.

The exporter writes it beside the client ``.tflite`` files; the edge client
reads it. It says how raw pixels become the client's input, what the client
sends (shape, dtype, quantization), and which server model and signature take
it. This module needs only numpy and the standard library (no TensorFlow), so
that it runs on a device.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from nopeek_tf import files

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
VARIANTS = ("float32", "float16", "dynamic", "int8")
FLOAT_SIGNATURE = "serving_default"
INT8_SIGNATURE = "serving_int8"
ACTIVATIONS_INPUT = "activations"


@dataclasses.dataclass
class Quantization:
    """Affine quantization: real = scale * (quantized - zero_point)."""

    scale: float
    zero_point: int


@dataclasses.dataclass
class TensorInfo:
    """One tensor of one sample (no batch dimension)."""

    shape: list[int]
    dtype: str
    quantization: Quantization | None = None

    @property
    def bytes_per_sample(self) -> int:
        """Bytes this tensor takes for one sample."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class Preprocessing:
    """How a decoded image (uint8 pixels, HxWxC) becomes the model's float input.

    The device converts the image to ``channels`` (1: grey, 3: RGB), resizes it
    to ``image_size`` (height, width) when it differs (:func:`resize_area`: area
    averaging, rounded to uint8 pixels, exactly as the training pipeline does),
    and multiplies the pixels by ``scale``. A quantized client input then takes
    ``round(x / input.scale) + input.zero_point``.
    """

    image_size: list[int]
    channels: int
    scale: float = 1.0 / 255.0
    resize_method: str = "area"


@dataclasses.dataclass
class ClientModel:
    """One exported ``.tflite`` variant of the client half.

    ``wire_quantization``: for an int8 client of a model with device noise, how the device
    quantizes the noisy activations for the wire (symmetric, wide enough for the noise;
    the server's int8 signature dequantizes with it); None: the client's output goes as it is.
    """

    variant: str
    file: str
    input: TensorInfo
    output: TensorInfo
    server_signature: str
    size_bytes: int
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)
    wire_quantization: Quantization | None = None

    @property
    def wire_dtype(self) -> str:
        """The dtype of what this client sends: int8 for the int8 signature, else float32."""
        return "int8" if self.server_signature == INT8_SIGNATURE else "float32"


@dataclasses.dataclass
class Noise:
    """The noise the device adds before sending: clip each value to [-clip, clip], add Gaussian noise.

    Drawn on the device from a generator the operating system seeds (never from a seed in a file);
    the bits one request can then reveal: :func:`nopeek_tf.device.bound.bound_bits`.
    """

    kind: str
    stddev: float
    clip: float


@dataclasses.dataclass
class Manifest:
    """Everything a device and a server need to agree on."""

    model_name: str
    server_version: int
    dataset: str
    class_names: list[str]
    arch: str
    cut: str
    alpha: float
    preprocessing: Preprocessing
    activation_shape: list[int]
    clients: dict[str, ClientModel]
    source_metrics: dict[str, Any]
    privacy: dict[str, Any] | None = None
    noise: Noise | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Manifest":
        """Parses :meth:`to_json` output; ValueError names what is wrong."""
        try:
            if values.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {values.get('format_version')!r}, expected {FORMAT_VERSION}")
            clients = {
                name: ClientModel(
                    **{**client,
                       "input": _tensor_info(client["input"]),
                       "output": _tensor_info(client["output"]),
                       "wire_quantization": _quantization(client.get("wire_quantization"))})
                for name, client in values["clients"].items()
            }
            noise = Noise(**values["noise"]) if values.get("noise") else None
            if noise is not None and (noise.kind != "gaussian" or not noise.stddev > 0 or not noise.clip > 0):
                raise ValueError(f"noise must be gaussian with stddev > 0 and clip > 0, got {values['noise']}")
            return cls(**{**values, "preprocessing": Preprocessing(**values["preprocessing"]), "clients": clients,
                          "noise": noise})
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a nopeek-tf manifest: {error}") from None

    def save(self, folder: str) -> str:
        """Writes ``folder/manifest.json``; returns its path."""
        path = os.path.join(folder, MANIFEST_FILE)
        files.write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str) -> "Manifest":
        """Reads a manifest file (or the manifest.json in a folder)."""
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_FILE)
        with open(path) as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        try:
            return cls.from_json(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def client_for_file(self, tflite_path: str) -> ClientModel:
        """The client variant whose file is ``tflite_path`` (matched by file name)."""
        name = os.path.basename(tflite_path)
        for client in self.clients.values():
            if client.file == name:
                return client
        raise ValueError(f"{name} is not listed in the manifest (it lists {', '.join(c.file for c in self.clients.values())})")


def _quantization(values: dict[str, Any] | None) -> Quantization | None:
    return Quantization(**values) if values else None


def _tensor_info(values: dict[str, Any]) -> TensorInfo:
    return TensorInfo(shape=list(values["shape"]), dtype=values["dtype"],
                      quantization=_quantization(values.get("quantization")))


def quantize(values: np.ndarray, quantization: Quantization, dtype: str) -> np.ndarray:
    """Real values -> integers of ``dtype`` with ``quantization`` (rounded, clipped)."""
    info = np.iinfo(dtype)
    quantized = np.round(values / quantization.scale) + quantization.zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    """Integers -> float32 reals with ``quantization``."""
    return (quantization.scale * (values.astype(np.float32) - quantization.zero_point)).astype(np.float32)


def _area_weights(source: int, target: int) -> np.ndarray:
    """[target, source] matrix: the share of each source pixel in each target pixel."""
    scale = source / target
    edges = np.arange(target + 1) * scale
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return overlap / scale


def resize_area(pixels: np.ndarray, image_size: list[int] | tuple[int, int]) -> np.ndarray:
    """Resizes uint8 pixels [H, W, C] by area averaging and rounds to uint8.

    The same as the training pipeline's ``tf.image.resize(..., method="area")``
    followed by rounding (half to even), without TensorFlow.
    """
    height, width = image_size
    if pixels.shape[:2] == (height, width):
        return pixels
    rows = _area_weights(pixels.shape[0], height)
    columns = _area_weights(pixels.shape[1], width)
    resized = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float64), columns)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def client_input(pixels: np.ndarray, preprocessing: Preprocessing, client: ClientModel) -> np.ndarray:
    """Turns a batch of uint8 pixel arrays [N, H, W, C] of the right size into the client's input.

    Resizing and colour conversion happen before (they need an image library);
    this function is the part that must match training bit for bit.
    """
    expected = (*preprocessing.image_size, preprocessing.channels)
    if tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"client input must be images of shape {expected}, got {tuple(pixels.shape[1:])}")
    x = pixels.astype(np.float32) * np.float32(preprocessing.scale)
    if client.input.quantization is not None:
        return quantize(x, client.input.quantization, client.input.dtype)
    return x.astype(client.input.dtype)
