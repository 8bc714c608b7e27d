"""The client half as TFLite: the four variants (float32, float16, dynamic, int8; builtin ops only)."""

from __future__ import annotations

import os
import re

from nopeek_tf import files
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import runtime
from nopeek_tf.device.litert import ClientRunner

from .card import wire_quantization
from .staging import ExportError, ExportImages


def client_file_name(variant: str) -> str:
    return f"client_{variant}.tflite"


def convert_client(client, variant: str, representative=None) -> bytes:
    """Converts the Keras client half to a builtin-ops-only ``.tflite`` of ``variant``.

    Args:
      client: the Keras client model (float image in [0, 1] -> activations).
      variant: float32, float16, dynamic or int8.
      representative: for int8, float32 images [N, H, W, C] from the training split.

    Raises:
      ExportError: the model needs TensorFlow (Flex) ops; the message lists them.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(client)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None or len(representative) == 0:
            raise ExportError("the int8 variant needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # The device feeds raw pixels: uint8 with scale 1/255 and zero point 0.
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
    elif variant != "float32":
        raise ExportError(f"unknown variant {variant!r}; choose from {', '.join(manifest_lib.VARIANTS)}")
    try:
        with runtime.quiet_native_output():
            return converter.convert()
    except Exception as error:  # ConverterError, or ValueError for unsupported types
        text = str(error)
        ops = sorted(set(re.findall(r"\btf\.(\w+)", text)))
        if ops:
            raise ExportError(f"the client needs TensorFlow ops that TFLite builtins lack ({', '.join(ops)}); "
                              "devices have no Flex runtime: change the client layers or the cut") from None
        raise ExportError(f"TFLite conversion of the {variant} client failed: {text.strip().splitlines()[-1]}") from None


def tensor_info(detail: dict) -> manifest_lib.TensorInfo:
    """Manifest TensorInfo of a LiteRT input/output detail."""
    scale, zero_point = detail["quantization"]
    quantization = manifest_lib.Quantization(float(scale), int(zero_point)) if scale else None
    return manifest_lib.TensorInfo(shape=[int(d) for d in detail["shape"][1:]],
                                   dtype=str(detail["dtype"].__name__), quantization=quantization)


def build_clients(client_model, variants, images: ExportImages, folder: str, log=print,
                  noise: manifest_lib.Noise | None = None
                  ) -> tuple[dict[str, manifest_lib.ClientModel], dict[str, ClientRunner]]:
    """Converts, checks (no Flex ops) and writes each client variant to ``folder``."""
    clients, runners = {}, {}
    for variant in variants:
        log(f"converting the client to TFLite: {variant}")
        tflite_model = convert_client(client_model, variant, images.representative)
        runner = ClientRunner(tflite_model, None, images.preprocessing)
        flex = sorted(op for op in runner.model.op_names() if op.lower().startswith("flex"))
        if flex:
            raise ExportError(f"the {variant} client uses Flex ops {', '.join(flex)}; devices cannot run them")
        file_name = client_file_name(variant)
        files.write_bytes(os.path.join(folder, file_name), tflite_model)
        output = tensor_info(runner.model.output_detail)
        runner.client = clients[variant] = manifest_lib.ClientModel(
            variant=variant, file=file_name, input=tensor_info(runner.model.input_detail), output=output,
            server_signature=manifest_lib.INT8_SIGNATURE if output.dtype == "int8" else manifest_lib.FLOAT_SIGNATURE,
            size_bytes=len(tflite_model),
            wire_quantization=wire_quantization(noise) if noise is not None and output.dtype == "int8" else None)
        runners[variant] = runner
    return clients, runners
