"""One export end to end: a central model dir, a split client's or a split server's (:func:`export_model`)."""

from __future__ import annotations

import os

import numpy as np

from nopeek_tf import config as config_lib
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import model_dir as model_dir_lib

from .card import install_client, manifest_noise, write_manifest
from .serving_model import (build_server_savedmodel, check_parity, install_server, next_version,
                            server_int8_quantization)
from .staging import (CLIENT_DIR, SERVING_DIR, ExportConfig, ExportError, load_export_images, staged,
                      load_trained)
from .tflite import build_clients


def install(staging: str, export_dir: str, model_name: str, version: int) -> str:
    """Moves the staged server version, then the client folder that pairs with it, into place.

    Returns:
      The client folder.
    """
    install_server(staging, export_dir, model_name, version)
    return install_client(staging, export_dir)


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
    if found.get("collapsed") and not config.force:
        if found.get("far_below_reference"):
            why = f"is far below the {found['reference_accuracy']:.4f} the model reaches without the defence"
        else:
            why = f"is at chance ({found['chance_accuracy']:.4f}): its exported client would answer at random"
        raise ExportError(f"{config.model_dir}: test accuracy {found['test_accuracy']:.4f} {why}; retrain it "
                          "(python -m train.train prints what to try) or give --force")
    side = found.get("split_side")
    if side == "server":
        return export_split_server(config, found, log)
    if config.client_manifest:
        raise ExportError("--client_manifest is for a split server's model dir (python -m train.split_server)")
    split, metrics = load_trained(config.model_dir)
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
