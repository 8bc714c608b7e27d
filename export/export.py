r"""Exports a trained model dir: the client half to TFLite, the server half for TF Serving.

  python -m export.export --model_dir=runs/orl_faces_orl_cnn_conv2_alpha1

writes to --export_dir (default <model_dir>/export):

  client/manifest.json               the device/server contract (nopeek_tf.manifest)
  client/client_<variant>.tflite     float32, float16, dynamic, int8 (builtin ops only)
  serving/models.config              model_config_list for tensorflow_model_server
  serving/batching_parameters.txt    for --enable_batching
  serving/<model_name>/<version>/    the server half as a SavedModel; each export
                                     adds a version and never overwrites one

The SavedModel's signature "serving_default" takes float32 activations
(input "activations", [None, ...]) and returns "probabilities", "class_ids" and
"logits". With the int8 variant it also has "serving_int8", which takes the
int8 activations an int8 client sends (4x fewer bytes) and dequantizes them
with that client's output scale and zero point before the server half.

Before anything is moved into place the exporter checks, on held-out test
images, that LiteRT client + server SavedModel agree with the Keras model, and
records the result in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from nopeek_tf import manifest as manifest_lib
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime
from nopeek_tf.litert import LiteRTModel

CLIENT_DIR = "client"
SERVING_DIR = "serving"
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
BATCHING_PARAMETERS_TEXT = """\
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


class ExportError(ValueError):
    """The export cannot be made; the message names the flag or the problem."""


@dataclasses.dataclass
class ExportConfig:
    """Settings of one export (one field per flag)."""

    model_dir: str
    export_dir: str | None = None
    variants: tuple[str, ...] = manifest_lib.VARIANTS
    model_name: str | None = None
    parity_images: int = 1000
    representative_images: int = 200


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


def check_parity(litert: LiteRTModel, client_model: manifest_lib.ClientModel, preprocessing,
                 server_signatures, pixels, labels, keras_logits) -> dict:
    """LiteRT client + server SavedModel against the Keras full model on held-out images."""
    import numpy as np
    import tensorflow as tf

    signature = server_signatures[client_model.server_signature]
    logits = []
    for start in range(0, len(pixels), 100):
        inputs = manifest_lib.client_input(pixels[start:start + 100], preprocessing, client_model)
        activations = litert(inputs)
        logits.append(signature(activations=tf.constant(activations))["logits"].numpy())
    logits = np.concatenate(logits)
    predicted = logits.argmax(axis=1)
    keras_predicted = keras_logits.argmax(axis=1)
    return {
        "images": int(len(pixels)),
        "top1_agreement": float(np.mean(predicted == keras_predicted)),
        "max_abs_logit_diff": float(np.max(np.abs(logits - keras_logits))),
        "accuracy": float(np.mean(predicted == labels)),
        "keras_accuracy": float(np.mean(keras_predicted == labels)),
    }


def _take_pixels(dataset, count: int):
    """The first ``count`` (uint8 images, labels) of a raw split as numpy arrays."""
    import numpy as np

    images, labels = [], []
    for image, label in dataset.take(count).batch(1000):
        images.append(image.numpy())
        labels.append(label.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _load_trained(model_dir: str):
    split, metrics = model_dir_lib.load(model_dir)
    if split.noise is not None:
        raise ExportError(f"--model_dir {model_dir} is a noise baseline (trained with --noise): its client "
                          f"would ship without the noise it was evaluated with; export a NoPeek model instead")
    return split, metrics


def privacy_card(model_dir: str) -> dict | None:
    """What the client leaks, from <model_dir>/leakage.json (python -m train.leakage), or None."""
    path = os.path.join(model_dir, model_dir_lib.LEAKAGE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        leakage = json.load(f)
    return {key: leakage[key] for key in ("worst_attack", "worst_ssim", "worst_psnr", "test_dcor",
                                          "dcor_batch_size", "client")}


def _prepare_export_dir(export_dir: str) -> str:
    try:
        os.makedirs(export_dir, exist_ok=True)
        return tempfile.mkdtemp(prefix=".staging-", dir=export_dir)
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None


def _write_text(path: str, text: str) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def export_model(config: ExportConfig, log=print) -> manifest_lib.Manifest:
    """Exports the client variants, the server SavedModel and the manifest.

    Everything is built and checked in a staging folder inside the export dir
    and only then moved into place, so a failed export leaves nothing behind.

    Returns:
      The manifest written to ``<export_dir>/client/manifest.json``.

    Raises:
      ExportError: bad settings or an unexportable model; the message says which.
      nopeek_tf.model_dir.ModelDirError: no trained model in ``config.model_dir``.
    """
    unknown = [v for v in config.variants if v not in manifest_lib.VARIANTS]
    if unknown or not config.variants:
        raise ExportError(f"--variants: unknown variant {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(manifest_lib.VARIANTS)}")
    if config.parity_images < 1 or config.representative_images < 1:
        raise ExportError("--parity_images and --representative_images must be at least 1")
    split, metrics = _load_trained(config.model_dir)
    export_dir = config.export_dir or os.path.join(config.model_dir, "export")
    model_name = config.model_name or f"nopeek_{metrics['dataset']}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise ExportError(f"--model_name {model_name!r}: use letters, digits, '_', '-' and '.'")

    import numpy as np
    import tensorflow as tf

    from nopeek_tf import data

    staging = _prepare_export_dir(export_dir)
    try:
        raw = data.load(metrics["dataset"], metrics.get("data_dir"))
        image_size = metrics.get("image_size")
        shape = metrics["input_shape"]
        train_pixels, _ = _take_pixels(raw.train.shuffle(10_000, seed=0), config.representative_images)
        test_pixels, test_labels = _take_pixels(raw.test, config.parity_images)
        if image_size:
            train_pixels = np.stack([manifest_lib.resize_area(p, image_size) for p in train_pixels])
            test_pixels = np.stack([manifest_lib.resize_area(p, image_size) for p in test_pixels])
        preprocessing = manifest_lib.Preprocessing(image_size=list(shape[:2]), channels=int(shape[2]))
        keras_logits = split.full.predict(test_pixels.astype(np.float32) * np.float32(preprocessing.scale),
                                          batch_size=100, verbose=0)

        os.makedirs(os.path.join(staging, CLIENT_DIR))
        # A black and a white image make the int8 input cover every pixel value:
        # uint8 pixels then map exactly (scale 1/255, zero point 0).
        extremes = np.stack([np.zeros_like(train_pixels[0]), np.full_like(train_pixels[0], 255)])
        representative = np.concatenate([extremes, train_pixels]).astype(np.float32) * np.float32(preprocessing.scale)
        tflite_models, interpreters, clients = {}, {}, {}
        for variant in config.variants:
            log(f"converting the client to TFLite: {variant}")
            tflite_models[variant] = convert_client(split.client, variant, representative)
            litert = interpreters[variant] = LiteRTModel(tflite_models[variant])
            flex = sorted(op for op in litert.op_names() if op.lower().startswith("flex"))
            if flex:
                raise ExportError(f"the {variant} client uses Flex ops {', '.join(flex)}; devices cannot run them")
            file_name = client_file_name(variant)
            with open(os.path.join(staging, CLIENT_DIR, file_name), "wb") as f:
                f.write(tflite_models[variant])
            output = tensor_info(litert.output_detail)
            clients[variant] = manifest_lib.ClientModel(
                variant=variant, file=file_name, input=tensor_info(litert.input_detail), output=output,
                server_signature=manifest_lib.INT8_SIGNATURE if output.dtype == "int8" else manifest_lib.FLOAT_SIGNATURE,
                size_bytes=len(tflite_models[variant]))

        log("writing the server SavedModel")
        server_path = os.path.join(staging, "server")
        int8_quantization = clients["int8"].output.quantization if "int8" in clients else None
        build_server_savedmodel(split.server, server_path, int8_quantization)
        signatures = tf.saved_model.load(server_path).signatures
        for variant, client in clients.items():
            client.parity = check_parity(interpreters[variant], client, preprocessing, signatures,
                                         test_pixels, test_labels, keras_logits)
            p = client.parity
            log(f"parity {variant:8s}: top-1 agreement {p['top1_agreement']:.4f}, max |logit diff| "
                f"{p['max_abs_logit_diff']:.2e}, accuracy {p['accuracy']:.4f} (Keras {p['keras_accuracy']:.4f}) "
                f"on {p['images']} test images")

        model_base_path = os.path.join(export_dir, SERVING_DIR, model_name)
        version = next_version(model_base_path)
        manifest = manifest_lib.Manifest(
            model_name=model_name, server_version=version, dataset=metrics["dataset"],
            class_names=list(metrics["class_names"]), arch=metrics["arch"], cut=metrics["cut"],
            alpha=float(metrics["alpha"]), preprocessing=preprocessing,
            activation_shape=list(metrics["activation_shape"]), clients=clients,
            source_metrics={key: metrics[key] for key in ("test_accuracy", "test_dcor", "dcor_batch_size")},
            privacy=privacy_card(config.model_dir))
        manifest.save(os.path.join(staging, CLIENT_DIR))

        # Move into place: the new version, then the client folder that pairs with it.
        os.makedirs(model_base_path, exist_ok=True)
        os.rename(server_path, os.path.join(model_base_path, str(version)))
        client_dir = os.path.join(export_dir, CLIENT_DIR)
        if os.path.exists(client_dir):
            os.rename(client_dir, os.path.join(staging, "previous_client"))
        os.rename(os.path.join(staging, CLIENT_DIR), client_dir)
        serving_dir = os.path.join(export_dir, SERVING_DIR)
        _write_text(os.path.join(serving_dir, MODELS_CONFIG), models_config_text(model_name, f"/models/{model_name}"))
        _write_text(os.path.join(serving_dir, BATCHING_PARAMETERS), BATCHING_PARAMETERS_TEXT)
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported {', '.join(config.variants)} clients to {client_dir} and server version {version} "
        f"to {model_base_path}/{version}")
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    flags.DEFINE_string("model_dir", None, "A model dir written by python -m train.train.")
    flags.DEFINE_string("export_dir", None, "Output folder (default <model_dir>/export).")
    flags.DEFINE_list("variants", list(manifest_lib.VARIANTS), "Client variants: float32, float16, dynamic, int8.")
    flags.DEFINE_string("model_name", None, "TF Serving model name (default nopeek_<dataset>).")
    flags.DEFINE_integer("parity_images", 1000, "Held-out test images for the parity check.")
    flags.DEFINE_integer("representative_images", 200, "Training images that calibrate the int8 client.")


def main(argv):
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required (a folder written by python -m train.train)")
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.data import DatasetError

    config = ExportConfig(model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir, variants=tuple(FLAGS.variants),
                          model_name=FLAGS.model_name, parity_images=FLAGS.parity_images,
                          representative_images=FLAGS.representative_images)
    try:
        export_model(config)
    except (ExportError, DatasetError, model_dir_lib.ModelDirError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
