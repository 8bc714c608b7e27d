"""The server half for TF Serving: its SavedModel (float32 and int8 signatures), ``models.config`` and the
batching parameters, and the parity check of LiteRT client + SavedModel against the Keras model."""

from __future__ import annotations

import os

import numpy as np

from nopeek_tf import files
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf.device.litert import ClientRunner
from nopeek_tf.device.noise import DeviceNoiseSource

from .staging import SERVING_DIR, ExportError

MODELS_CONFIG = "models.config"


BATCHING_PARAMETERS = "batching_parameters.txt"


BATCHING_PARAMETERS_TEXT = """\
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


def build_server_savedmodel(server, path: str, int8_quantization: manifest_lib.Quantization | None) -> None:
    """Writes the server half as a SavedModel with the serving signatures."""
    import keras
    import tensorflow as tf

    shape = list(server.input_shape[1:])

    def outputs(activations):
        logits = server(activations, training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits),
                "class_ids": tf.argmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(server)
    archive.add_endpoint(
        manifest_lib.FLOAT_SIGNATURE, outputs,
        input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=manifest_lib.ACTIVATIONS_INPUT)])
    if int8_quantization is not None:
        scale = float(int8_quantization.scale)
        zero_point = float(int8_quantization.zero_point)
        archive.add_endpoint(
            manifest_lib.INT8_SIGNATURE,
            lambda activations: outputs(scale * (tf.cast(activations, tf.float32) - zero_point)),
            input_signature=[tf.TensorSpec([None, *shape], tf.int8, name=manifest_lib.ACTIVATIONS_INPUT)])
    archive.write_out(path, verbose=False)


def server_int8_quantization(clients: dict[str, manifest_lib.ClientModel]) -> manifest_lib.Quantization | None:
    """How the server's int8 signature reads what the int8 client sends (its wire quantization, else its output's);
    None without an int8 client."""
    int8 = clients.get("int8")
    return None if int8 is None else int8.wire_quantization or int8.output.quantization


def next_version(model_base_path: str) -> int:
    """1 + the highest numeric version folder under ``model_base_path`` (1 if none)."""
    if not os.path.isdir(model_base_path):
        return 1
    versions = [int(name) for name in os.listdir(model_base_path) if name.isdigit()]
    return max(versions, default=0) + 1


def models_config_text(model_name: str, base_path: str) -> str:
    """A model_config_list text proto serving ``model_name`` from ``base_path``."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )


def install_server(staging: str, export_dir: str, model_name: str, version: int) -> str:
    """Moves the staged server SavedModel into place as ``version`` and writes models.config; returns its path."""
    model_base_path = os.path.join(export_dir, SERVING_DIR, model_name)
    target = os.path.join(model_base_path, str(version))
    if os.path.exists(target):
        raise ExportError(f"{target} exists: serve it, or export the client again for a new version")
    os.makedirs(model_base_path, exist_ok=True)
    os.rename(os.path.join(staging, "server"), target)
    serving_dir = os.path.join(export_dir, SERVING_DIR)
    files.write_text(os.path.join(serving_dir, MODELS_CONFIG), models_config_text(model_name, f"/models/{model_name}"))
    files.write_text(os.path.join(serving_dir, BATCHING_PARAMETERS), BATCHING_PARAMETERS_TEXT)
    return target


def served_logits(runner: ClientRunner, server_signatures, pixels, noise: DeviceNoiseSource | None = None
                  ) -> np.ndarray:
    """Logits of LiteRT client + server SavedModel for uint8 pixels, with what goes on the wire as the device sends it."""
    import tensorflow as tf

    signature = server_signatures[runner.client.server_signature]
    return np.concatenate([
        signature(activations=tf.constant(runner.wire_activations(pixels[start:start + 100], noise)))["logits"].numpy()
        for start in range(0, len(pixels), 100)])


def check_parity(runner: ClientRunner, server_signatures, pixels, labels, keras_logits,
                 noise: manifest_lib.Noise | None = None) -> dict:
    """LiteRT client + server SavedModel against the Keras model (without noise) on held-out images.

    With device noise, also the accuracy with the noise the device adds (fresh draws, as for new images).
    """
    logits = served_logits(runner, server_signatures, pixels)
    predicted = logits.argmax(axis=1)
    keras_predicted = keras_logits.argmax(axis=1)
    parity = {
        "images": int(len(pixels)),
        "top1_agreement": float(np.mean(predicted == keras_predicted)),
        "max_abs_logit_diff": float(np.max(np.abs(logits - keras_logits))),
        "accuracy": float(np.mean(predicted == labels)),
        "keras_accuracy": float(np.mean(keras_predicted == labels)),
    }
    if noise is not None:
        noisy = served_logits(runner, server_signatures, pixels, DeviceNoiseSource(noise, memoise=False))
        parity["noisy_accuracy"] = float(np.mean(noisy.argmax(axis=1) == labels))
    return parity
