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

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import files
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime
from nopeek_tf.device import bound as bound_lib
from nopeek_tf.device.litert import ClientRunner
from nopeek_tf.device.noise import DeviceNoiseSource

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


# The exporter warns when the worst attack's SSIM exceeds the label-only floor by more than this
# (README, "Leakage"): above it, the activations show more of the image than the class does.
EXCESS_WARNING = 0.10
# The int8 wire of a noisy client covers [-(clip + WIRE_NOISE_STDDEVS * stddev), +...]: the noise is rarely cut.
WIRE_NOISE_STDDEVS = 4.0


class ExportError(ValueError):
    """The export cannot be made; the message names the flag or the problem."""


@dataclasses.dataclass(frozen=True)
class ExportConfig(config_lib.Settings):
    """Settings of one export (one field per flag)."""

    model_dir: str | None = config_lib.setting(None, "A model dir written by python -m train.train (required).")
    export_dir: str | None = config_lib.setting(None, "Output folder (default <model_dir>/export).")
    variants: tuple[str, ...] = config_lib.setting(manifest_lib.VARIANTS, "Client variants: float32, float16, "
                                                   "dynamic, int8.", choices=manifest_lib.VARIANTS)
    model_name: str | None = config_lib.setting(None, "TF Serving model name (default nopeek_<dataset>).")
    parity_images: int = config_lib.setting(1000, "Held-out test images for the parity check.", minimum=1)
    representative_images: int = config_lib.setting(200, "Training images that calibrate the int8 client.",
                                                    minimum=1)
    client_manifest: str | None = config_lib.setting(None, "For a split server's model dir (python -m "
                                                     "train.split_server): the manifest.json of the client's "
                                                     "export, which names the model, version and int8 wire the "
                                                     "server half must pair with.")

    def validate(self) -> None:
        if not self.variants:
            raise config_lib.ConfigError(f"--variants: none given; choose from {', '.join(manifest_lib.VARIANTS)}")
        if not self.model_dir:
            raise config_lib.ConfigError("--model_dir is required (a folder written by python -m train.train)")
        super().validate()
        if self.model_name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise config_lib.ConfigError(f"--model_name {self.model_name!r}: use letters, digits, '_', '-' and '.'")


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


def _take_pixels(dataset, count: int):
    """The first ``count`` (uint8 images, labels) of a raw split as numpy arrays."""
    images, labels = [], []
    for image, label in dataset.take(count).batch(1000):
        images.append(image.numpy())
        labels.append(label.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _load_trained(model_dir: str):
    split, metrics = model_dir_lib.load(model_dir)
    if split.device_noise is not None and not split.bounded:
        raise ExportError(f"--model_dir {model_dir} adds device noise to a client that does not end in tanh; "
                          "train it with --bottleneck=K --bounded")
    if split.noise is not None:
        raise ExportError(f"--model_dir {model_dir} is a noise baseline (trained with --noise): its client "
                          f"would ship without the noise it was evaluated with; export a NoPeek model instead")
    return split, metrics


def privacy_card(model_dir: str, bound: dict) -> dict:
    """What the client can leak: the bound in bits (always) and, from <model_dir>/leakage.json
    (python -m train.leakage), what the attacks reconstructed."""
    card = dict(bound)
    leakage = model_dir_lib.read_leakage(model_dir)
    if leakage is None:
        return card
    card.update({key: leakage.get(key) for key in ("worst_attack", "worst_ssim", "worst_psnr", "floor_ssim",
                                                   "excess_ssim", "test_dcor", "dcor_batch_size", "client")})
    card["budget"] = {"train_images": leakage.get("train_images"), "test_images": leakage.get("test_images"),
                      **{attack["attack"]: attack["budget"] for attack in leakage.get("attacks", [])}}
    return card


def bound_verdict(card: dict) -> str:
    """One line on the bound in bits; a warning when it is no lower than what the wire format carries anyway."""
    verdict = (f"bound: one request reveals at most {card['bound_bits']:.2f} bits about the image "
               f"({card['sent_values']} values on a {card['bound_wire']} wire; the class takes "
               f"{card['label_bits']:.2f})")
    wire_limit = bound_lib.bound_bits(card["sent_values"], card["bound_wire"])
    if card["bound_bits"] >= wire_limit:
        return (f"warning: {verdict}: no bound below the wire format's own; train with --bottleneck=K --bounded "
                "--device_noise=S for one")
    return verdict


def privacy_verdict(card: dict, model_dir: str) -> list[str]:
    """Lines on what the exported client leaks: the bound, then the attacks (a warning without an evaluation
    or above EXCESS_WARNING)."""
    lines = [bound_verdict(card)]
    if card.get("worst_attack") is None:
        lines.append(f"warning: {model_dir} has no leakage evaluation: the manifest's privacy card holds only the "
                     f"bound; run python -m train.leakage --model_dir={model_dir} before shipping this client")
    elif card.get("excess_ssim") is None:
        lines.append(f"warning: {model_dir}'s leakage evaluation predates the label-only floor; run python -m "
                     f"train.leakage --model_dir={model_dir} again")
    else:
        verdict = (f"privacy card: worst attack {card['worst_attack']} SSIM {card['worst_ssim']:.3f}, label-only "
                   f"floor {card['floor_ssim']:.3f}, excess {card['excess_ssim']:+.3f}")
        if card["excess_ssim"] > EXCESS_WARNING:
            verdict = (f"warning: {verdict}: above {EXCESS_WARNING:g}, the activations this client sends show more "
                       "of the image than its class does")
        lines.append(verdict)
    return lines


def manifest_noise(split) -> manifest_lib.Noise | None:
    """The manifest's noise for a model trained with device noise, else None."""
    if split.device_noise is None:
        return None
    return manifest_lib.Noise(kind="gaussian", stddev=split.device_noise.stddev, clip=split.device_noise.clip)


def wire_quantization(noise: manifest_lib.Noise) -> manifest_lib.Quantization:
    """The int8 wire of a noisy client: symmetric, over clip + WIRE_NOISE_STDDEVS noise stddevs."""
    return manifest_lib.Quantization(scale=(noise.clip + WIRE_NOISE_STDDEVS * noise.stddev) / 127.0, zero_point=0)


def export_bound(split, metrics: dict, clients: dict[str, manifest_lib.ClientModel]) -> dict:
    """The bound of the exported clients: the largest over their wire formats (a float32 wire carries the most)."""
    reports = [split.bound_report(int(metrics["num_classes"]), client.wire_dtype) for client in clients.values()]
    return max(reports, key=lambda report: report["bound_bits"])


@contextlib.contextmanager
def staged(export_dir: str):
    """A staging folder inside ``export_dir`` to build an export in, removed afterwards; a failed write is an
    ExportError naming the folder (so nothing half-written is left behind)."""
    staging = _prepare_export_dir(export_dir)
    try:
        yield staging
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_export_dir(export_dir: str) -> str:
    try:
        os.makedirs(export_dir, exist_ok=True)
        return tempfile.mkdtemp(prefix=".staging-", dir=export_dir)
    except OSError as error:
        raise ExportError(f"--export_dir {export_dir} cannot be written: {error.strerror or error}") from None


@dataclasses.dataclass
class ExportImages:
    """The images an export uses, as uint8 pixels of the model's input size."""

    representative: np.ndarray  # float32 [0, 1], with a black and a white image first (int8 calibration)
    test_pixels: np.ndarray
    test_labels: np.ndarray
    preprocessing: manifest_lib.Preprocessing


def load_export_images(config: ExportConfig, metrics: dict) -> ExportImages:
    """Calibration images (training split) and parity images (test split) of the model's dataset."""
    from nopeek_tf.training import data

    raw = data.load_as_trained(metrics)
    train_pixels, _ = _take_pixels(raw.train.shuffle(10_000, seed=0), config.representative_images)
    test_pixels, test_labels = _take_pixels(raw.test, config.parity_images)
    shape = metrics["input_shape"]
    preprocessing = manifest_lib.Preprocessing(image_size=list(shape[:2]), channels=int(shape[2]))
    # A black and a white image make the int8 input cover every pixel value:
    # uint8 pixels then map exactly (scale 1/255, zero point 0).
    extremes = np.stack([np.zeros_like(train_pixels[0]), np.full_like(train_pixels[0], 255)])
    representative = np.concatenate([extremes, train_pixels]).astype(np.float32) * np.float32(preprocessing.scale)
    return ExportImages(representative, test_pixels, test_labels, preprocessing)


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


def write_manifest(model_dir: str, split, metrics: dict, images: ExportImages,
                   clients: dict[str, manifest_lib.ClientModel], noise: manifest_lib.Noise | None, model_name: str,
                   version: int, folder: str, log=print) -> manifest_lib.Manifest:
    """Writes the manifest of the exported ``clients`` to ``folder`` and logs the privacy verdict."""
    manifest = manifest_lib.Manifest(
        model_name=model_name, server_version=version, dataset=metrics["dataset"],
        class_names=list(metrics["class_names"]), arch=metrics.get("network", metrics["arch"]), cut=metrics["cut"],
        alpha=float(metrics["alpha"]), preprocessing=images.preprocessing,
        activation_shape=list(metrics["activation_shape"]), clients=clients,
        source_metrics={key: metrics[key] for key in ("test_accuracy", "test_dcor", "dcor_batch_size")},
        privacy=privacy_card(model_dir, export_bound(split, metrics, clients)), noise=noise)
    for line in privacy_verdict(manifest.privacy, model_dir):
        log(line)
    manifest.save(folder)
    return manifest


def install_client(staging: str, export_dir: str) -> str:
    """Moves the staged client folder into place (the previous one into the staging folder); returns its path."""
    client_dir = os.path.join(export_dir, CLIENT_DIR)
    if os.path.exists(client_dir):
        os.rename(client_dir, os.path.join(staging, "previous_client"))
    os.rename(os.path.join(staging, CLIENT_DIR), client_dir)
    return client_dir


def install(staging: str, export_dir: str, model_name: str, version: int) -> str:
    """Moves the staged server version, then the client folder that pairs with it, into place.

    Returns:
      The client folder.
    """
    install_server(staging, export_dir, model_name, version)
    return install_client(staging, export_dir)


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
    try:
        config.validate()
    except config_lib.ConfigError as error:
        raise ExportError(str(error)) from None
    found = model_dir_lib.read_metrics(config.model_dir)
    side = found.get("split_side")
    if side == "server":
        return export_split_server(config, found, log)
    if config.client_manifest:
        raise ExportError("--client_manifest is for a split server's model dir (python -m train.split_server)")
    split, metrics = _load_trained(config.model_dir)
    if side == "client":
        return export_split_client(config, split, metrics, log)
    export_dir = config.export_dir or os.path.join(config.model_dir, "export")
    model_name = config.model_name or f"nopeek_{metrics['dataset']}"

    import tensorflow as tf

    with staged(export_dir) as staging:
        images = load_export_images(config, metrics)
        test_images = images.test_pixels.astype("float32") * images.preprocessing.scale
        keras_logits = split.server.predict(split.client.predict(test_images, batch_size=100, verbose=0),
                                            batch_size=100, verbose=0)
        noise = manifest_noise(split)
        os.makedirs(os.path.join(staging, CLIENT_DIR))
        clients, runners = build_clients(split.client, config.variants, images, os.path.join(staging, CLIENT_DIR),
                                         log, noise)

        log("writing the server SavedModel")
        server_path = os.path.join(staging, "server")
        int8_quantization = server_int8_quantization(clients)
        build_server_savedmodel(split.server, server_path, int8_quantization)
        signatures = tf.saved_model.load(server_path).signatures
        for variant, client in clients.items():
            p = client.parity = check_parity(runners[variant], signatures, images.test_pixels, images.test_labels,
                                             keras_logits, noise)
            noisy = f"; with the device's noise {p['noisy_accuracy']:.4f}" if noise is not None else ""
            log(f"parity {variant:8s}: top-1 agreement {p['top1_agreement']:.4f}, max |logit diff| "
                f"{p['max_abs_logit_diff']:.2e}, accuracy {p['accuracy']:.4f} (Keras {p['keras_accuracy']:.4f}) "
                f"on {p['images']} test images without noise{noisy}")

        version = next_version(os.path.join(export_dir, SERVING_DIR, model_name))
        manifest = write_manifest(config.model_dir, split, metrics, images, clients, noise, model_name, version,
                                  os.path.join(staging, CLIENT_DIR), log)
        client_dir = install(staging, export_dir, model_name, version)
    log(f"exported {', '.join(config.variants)} clients to {client_dir} and server version {version} "
        f"to {os.path.join(export_dir, SERVING_DIR, model_name)}/{version}")
    return manifest


def _check_plain_layout(metrics: dict, model_dir: str) -> None:
    if metrics.get("layout", "plain") != "plain":
        raise ExportError(f"--model_dir {model_dir} was trained in the U-shaped layout (the client keeps the last "
                          "layer); the edge client and TF Serving serve the plain layout: train with --layout=plain")


def export_split_client(config: ExportConfig, split, metrics: dict, log=print) -> manifest_lib.Manifest:
    """Exports a split client's half (python -m train.split_client): the .tflite variants and the manifest.

    The server half is on the split server: its export (this function's twin, :func:`export_split_server`,
    given this manifest) writes the SavedModel the manifest names. Parity here compares each .tflite's
    activations with the Keras client's on held-out images.
    """
    _check_plain_layout(metrics, config.model_dir)
    export_dir = config.export_dir or os.path.join(config.model_dir, "export")
    model_name = config.model_name or f"nopeek_{metrics['dataset']}"
    with staged(export_dir) as staging:
        images = load_export_images(config, metrics)
        test_images = images.test_pixels.astype("float32") * images.preprocessing.scale
        keras_activations = split.client.predict(test_images, batch_size=100, verbose=0)
        noise = manifest_noise(split)
        os.makedirs(os.path.join(staging, CLIENT_DIR))
        clients, runners = build_clients(split.client, config.variants, images, os.path.join(staging, CLIENT_DIR),
                                         log, noise)
        for variant, client in clients.items():
            difference = np.abs(runners[variant].float_activations(images.test_pixels) - keras_activations)
            client.parity = {"images": int(len(test_images)), "max_abs_activation_diff": float(np.max(difference)),
                             "mean_abs_activation_diff": float(np.mean(difference))}
            log(f"parity {variant:8s}: max |activation diff| {client.parity['max_abs_activation_diff']:.2e} against "
                f"the Keras client on {len(test_images)} test images (the server half is the split server's)")
        version = next_version(os.path.join(export_dir, SERVING_DIR, model_name))
        manifest = write_manifest(config.model_dir, split, metrics, images, clients, noise, model_name, version,
                                  os.path.join(staging, CLIENT_DIR), log)
        client_dir = install_client(staging, export_dir)
    log(f"exported {', '.join(config.variants)} clients to {client_dir} for server version {version} of "
        f"{model_name}: on the split server, python -m export.export --model_dir=SERVER_DIR "
        f"--client_manifest={os.path.join(client_dir, manifest_lib.MANIFEST_FILE)}")
    return manifest


def export_split_server(config: ExportConfig, metrics: dict, log=print) -> manifest_lib.Manifest:
    """Exports a split server's half as the SavedModel (and models.config) that the client's manifest names.

    Returns:
      The client's manifest (unchanged: the device ships it).
    """
    if not config.client_manifest:
        raise ExportError(f"--model_dir {config.model_dir} holds a split server's half: give --client_manifest (the "
                          "manifest.json of python -m export.export on a client's model dir), which names the model, "
                          "version and int8 wire this half pairs with")
    try:
        manifest = manifest_lib.Manifest.load(config.client_manifest)
    except (OSError, ValueError) as error:
        raise ExportError(f"--client_manifest: {error}") from None
    _check_plain_layout(metrics, config.model_dir)
    if list(manifest.activation_shape) != list(metrics["activation_shape"]):
        raise ExportError(f"--client_manifest sends activations {manifest.activation_shape}; this server half takes "
                          f"{metrics['activation_shape']}")
    import keras

    server = keras.models.load_model(os.path.join(config.model_dir, model_dir_lib.SERVER_MODEL_FILE), compile=False)
    export_dir = config.export_dir or os.path.join(config.model_dir, "export")
    with staged(export_dir) as staging:
        int8_quantization = server_int8_quantization(manifest.clients)
        log("writing the server SavedModel")
        build_server_savedmodel(server, os.path.join(staging, "server"), int8_quantization)
        target = install_server(staging, export_dir, manifest.model_name, manifest.server_version)
    log(f"exported server version {manifest.server_version} of {manifest.model_name} to {target} (with "
        f"{'the float and int8 signatures' if int8_quantization else 'the float signature'})")
    return manifest


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    config_lib.define_flags(ExportConfig)
    flags.adopt_module_key_flags(config_lib)


def main(argv):
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required (a folder written by python -m train.train)")
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.training.data import DatasetError

    try:
        export_model(config_lib.from_flags(ExportConfig))
    except (ExportError, config_lib.ConfigError, DatasetError, model_dir_lib.ModelDirError) as error:
        sys.exit(f"error: {error}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
