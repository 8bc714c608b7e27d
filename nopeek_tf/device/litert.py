"""Runs a client ``.tflite`` with LiteRT (``ai_edge_litert``), without TensorFlow."""

from __future__ import annotations

import numpy as np


class LiteRTModel:
    """A single-input, single-output TFLite model on the LiteRT interpreter.

    Args:
      model: a ``.tflite`` path or the model's bytes.
      num_threads: interpreter threads (1 for latency figures that compare).
      default_delegates: False runs LiteRT's builtin kernels without its default
        (XNNPACK) delegate.
    """

    def __init__(self, model: str | bytes, num_threads: int = 1, default_delegates: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": model}
        self.interpreter = Interpreter(**source, num_threads=num_threads, experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        (self.input_detail,) = self.interpreter.get_input_details()
        (self.output_detail,) = self.interpreter.get_output_details()
        self._batch = int(self.input_detail["shape"][0])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_detail["dtype"])

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(self.output_detail["dtype"])

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            shape = [batch, *self.input_detail["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input_detail["index"], shape)
            self.interpreter.allocate_tensors()
            self.input_detail = self.interpreter.get_input_details()[0]
            self.output_detail = self.interpreter.get_output_details()[0]
            self._batch = batch

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Runs a batch [N, ...] of inputs of the model's input dtype; returns the output batch."""
        if inputs.dtype != self.input_dtype:
            raise ValueError(f"model input is {self.input_dtype}, got {inputs.dtype}")
        self._resize(len(inputs))
        self.interpreter.set_tensor(self.input_detail["index"], inputs)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_detail["index"]).copy()

    def output_op(self) -> str | None:
        """The builtin operator that produces the output tensor (read off the model itself; a delegate's
        stand-in nodes are passed over), e.g. ``TANH`` for a bounded client."""
        index = self.output_detail["index"]
        producers = [op["op_name"] for op in self.interpreter._get_ops_details()
                     if op["op_name"] != "DELEGATE" and index in list(op["outputs"])]
        return producers[-1] if producers else None

    def op_names(self) -> set[str]:
        """Names of the operators in the model (builtin names; Flex ops start with "Flex")."""
        return {op["op_name"] for op in self.interpreter._get_ops_details()}


class ClientRunner:
    """An exported client as the device runs it: uint8 pixels in, the activations it sends out.

    Manifest-aware: it preprocesses the pixels as the manifest says (scale,
    quantization of an int8 input), runs LiteRT in batches, and can dequantize
    an int8 client's activations. The one way to run a client ``.tflite``: the
    exporter's parity check, the attacks on an exported client, the edge client
    and the benchmark use it.

    Args:
      model: the ``.tflite`` path or bytes.
      client: the manifest's entry for this file.
      preprocessing: the manifest's preprocessing.
      batch_size: images per interpreter call.
      num_threads: LiteRT threads.
      default_delegates: False runs LiteRT's builtin kernels without XNNPACK.
    """

    def __init__(self, model: str | bytes, client, preprocessing, batch_size: int = 256, num_threads: int = 1,
                 default_delegates: bool = True):
        self.client = client
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.model = LiteRTModel(model, num_threads=num_threads, default_delegates=default_delegates)

    @classmethod
    def from_file(cls, tflite_path: str, manifest=None, **kwargs) -> "ClientRunner":
        """The runner of an exported client file; ``manifest`` (object or path) defaults to the one beside it.

        Raises:
          OSError: the manifest cannot be read.
          ValueError: the manifest is invalid or does not list the file.
        """
        import os

        from nopeek_tf.device import manifest as manifest_lib

        if manifest is None:
            manifest = os.path.dirname(os.path.abspath(tflite_path))
        if not isinstance(manifest, manifest_lib.Manifest):
            manifest = manifest_lib.Manifest.load(manifest)
        return cls(tflite_path, manifest.client_for_file(tflite_path), manifest.preprocessing, **kwargs)

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels [N, H, W, C] of the manifest's size -> the client's input batch."""
        from nopeek_tf.device import manifest as manifest_lib

        return manifest_lib.client_input(pixels, self.preprocessing, self.client)

    def send(self, pixels: np.ndarray) -> np.ndarray:
        """What the device sends for uint8 pixels [N, H, W, C]: the client's output (int8 for an int8 client)."""
        outputs = [self.model(self.inputs(pixels[start:start + self.batch_size]))
                   for start in range(0, len(pixels), self.batch_size)]
        return np.concatenate(outputs)

    def float_activations(self, pixels: np.ndarray) -> np.ndarray:
        """The activations as float32 (an int8 client's dequantized), as the server half reads them."""
        from nopeek_tf.device import manifest as manifest_lib

        activations = self.send(pixels)
        if self.client.output.quantization is not None:
            activations = manifest_lib.dequantize(activations, self.client.output.quantization)
        return activations.astype(np.float32)

    def wire_activations(self, pixels: np.ndarray, noise=None) -> np.ndarray:
        """What goes on the wire for uint8 pixels [N, H, W, C], as the edge client sends it.

        Without device noise, the client's output as it is (:meth:`send`). With a
        :class:`nopeek_tf.device.noise.DeviceNoiseSource`, the float activations clipped and noised;
        an int8 client's are then quantized with the manifest's ``wire_quantization``.
        """
        from nopeek_tf.device import manifest as manifest_lib

        if noise is None and self.client.wire_quantization is None:
            return self.send(pixels)
        activations = self.float_activations(pixels)
        if noise is not None:
            activations = noise.add(pixels, activations)
        if self.client.wire_quantization is not None:
            return manifest_lib.quantize(activations, self.client.wire_quantization, "int8")
        if self.client.output.quantization is not None:  # noise a device policy added to a client without any
            return manifest_lib.quantize(activations, self.client.output.quantization, self.client.output.dtype)
        return activations

    def from_float_images(self, images: np.ndarray) -> np.ndarray:
        """Float images in [0, 1] (as the training pipeline makes them) -> float32 activations."""
        pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        return self.float_activations(pixels)
