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

    def op_names(self) -> set[str]:
        """Names of the operators in the model (builtin names; Flex ops start with "Flex")."""
        return {op["op_name"] for op in self.interpreter._get_ops_details()}
