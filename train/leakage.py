r"""Attacks a trained model dir's client and writes what it leaks.

  python -m train.leakage --model_dir=runs/quickstart

Runs nopeek_tf.attacks.run_attacks on the client half (the Keras client, or
with --tflite the exported client as a device runs it, int8 included), scored
on held-out test images, and writes to the model dir:

  leakage.json          the worst case (attack, SSIM, PSNR), every attack's scores and budget, test dCor
  leakage.csv           one row per attack
  reconstructions.png   originals above each attack's reconstructions

The exporter copies the worst case into the manifest (its privacy card).
"""

from __future__ import annotations

import csv
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from nopeek_tf import runtime

LEAKAGE_FILE = "leakage.json"
FLAGS = flags.FLAGS


class LeakageError(ValueError):
    """The evaluation cannot run; the message names the flag or the problem."""


def _arrays(dataset, image_size, limit):
    import numpy as np

    from nopeek_tf import data

    images, labels = [], []
    for x, y in data.make_pipeline(dataset.take(limit), 500, False, 0, image_size):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def tflite_client(path: str):
    """The exported client as an attacker runs it: float images -> float activations (int8 dequantized)."""
    import numpy as np

    from nopeek_tf import manifest as manifest_lib
    from nopeek_tf.litert import LiteRTModel

    manifest = manifest_lib.Manifest.load(os.path.dirname(os.path.abspath(path)))
    client = manifest.client_for_file(path)
    model = LiteRTModel(path)

    def run(images):
        pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        outputs = []
        for start in range(0, len(pixels), 256):
            activations = model(manifest_lib.client_input(pixels[start:start + 256], manifest.preprocessing, client))
            if client.output.quantization is not None:
                activations = manifest_lib.dequantize(activations, client.output.quantization)
            outputs.append(activations.astype(np.float32))
        return np.concatenate(outputs)

    return run, client.variant


def save_grid(path: str, originals, rows: dict, columns: int = 8) -> None:
    """A PNG: originals on top, then one row of reconstructions per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(originals))
    names = ["original", *rows]
    figure, axes = plt.subplots(len(names), columns, figsize=(1.3 * columns, 1.5 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        images = originals if name == "original" else rows[name]
        for column in range(columns):
            axis = axes[row][column]
            if column < len(images):
                axis.imshow(images[column].squeeze(), cmap="gray" if images.shape[-1] == 1 else None,
                            vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train_recognizer(metrics: dict, images, labels, epochs: int):
    """A separate classifier trained on raw images (same architecture, no NoPeek), to judge reconstructions.

    Not the attacked model: it would recognise an inverted image from the very
    activations the inversion matched.
    """
    import keras

    from nopeek_tf import models

    keras.utils.set_random_seed(1)
    recognizer = models.build_split_model(metrics["arch"], images.shape[1:], metrics["num_classes"],
                                          metrics["cut"], alpha=0.0).full
    recognizer.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recognizer.fit(images, labels, batch_size=32, epochs=epochs, verbose=0)
    return recognizer


def evaluate_leakage(model_dir: str, tflite: str | None = None, budget=None, train_images: int = 2000,
                     test_images: int = 1000, seed: int = 0, recognizer_epochs: int = 20) -> dict:
    """Attacks the client of ``model_dir`` and writes leakage.json, leakage.csv and reconstructions.png."""
    import keras
    import numpy as np
    import tensorflow as tf

    from nopeek_tf import attacks, data, leakage, models

    model_path = os.path.join(model_dir, "model.keras")
    metrics_path = os.path.join(model_dir, "metrics.json")
    if not (os.path.exists(model_path) and os.path.exists(metrics_path)):
        raise LeakageError(f"--model_dir {model_dir} holds no trained model (model.keras and metrics.json)")
    with open(metrics_path) as f:
        metrics = json.load(f)
    split = models.split_halves(keras.models.load_model(model_path, compile=False))
    raw = data.load(metrics["dataset"], metrics.get("data_dir"))
    image_size = metrics.get("image_size")
    train_x, train_y = _arrays(raw.train, image_size, train_images)
    test_x, test_y = _arrays(raw.test, image_size, test_images)
    if tflite:
        client, variant = tflite_client(tflite)
    else:
        client, variant = (lambda x: split.client.predict(x, batch_size=256, verbose=0)), "keras"
    report = attacks.run_attacks(attacks.AttackInput(
        client=client, client_model=split.client, train_images=train_x, test_images=test_x,
        test_labels=test_y, recognizer=train_recognizer(metrics, train_x, train_y, recognizer_epochs)),
        budget, seed=seed)
    test_dcor, dcor_batch_size = leakage.mean_batch_dcor(
        lambda x, training=False: client(np.asarray(x)), tf.data.Dataset.from_tensor_slices(test_x),
        metrics["dcor_batch_size"])
    result = {**report.to_json(), "client": variant, "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size,
              "test_accuracy": metrics["test_accuracy"], "alpha": metrics["alpha"], "dataset": metrics["dataset"],
              "arch": metrics["arch"], "cut": metrics["cut"]}
    with open(os.path.join(model_dir, LEAKAGE_FILE), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(model_dir, "leakage.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["attack", "ssim", "psnr", "mse", "recognized_accuracy", "scored_images", "budget"])
        writer.writeheader()
        for attack in result["attacks"]:
            writer.writerow(attack)
    shown = report.scored_indices[:8]
    save_grid(os.path.join(model_dir, "reconstructions.png"), test_x[shown],
              {r.attack: r.reconstructions[:len(shown)] for r in report.results})
    return result


def main(argv):
    del argv
    runtime.run_from_invocation_directory()
    logging.set_verbosity(logging.WARNING)
    runtime.import_tensorflow_quietly()
    from nopeek_tf import attacks

    budget = attacks.AttackBudget(decoder_epochs=FLAGS.decoder_epochs, inversion_steps=FLAGS.inversion_steps,
                                  inversion_images=FLAGS.inversion_images)
    try:
        result = evaluate_leakage(FLAGS.model_dir, FLAGS.tflite, budget, FLAGS.train_images, FLAGS.test_images,
                                  recognizer_epochs=FLAGS.recognizer_epochs)
    except LeakageError as error:
        sys.exit(f"error: {error}")
    for attack in result["attacks"]:
        print(f"{attack['attack']:14s} SSIM {attack['ssim']:.3f}  PSNR {attack['psnr']:.1f} dB  recognised "
              f"{attack['recognized_accuracy']:.3f}  ({attack['budget']})")
    print(f"worst case: {result['worst_attack']} SSIM {result['worst_ssim']:.3f}; test dCor "
          f"{result['test_dcor']:.3f}; wrote {FLAGS.model_dir}/{LEAKAGE_FILE}")


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "A model dir written by python -m train.train.", required=True)
    flags.DEFINE_string("tflite", None, "Attack this exported client .tflite instead of the Keras client.")
    flags.DEFINE_integer("decoder_epochs", 40, "Epochs of each decoder attack.")
    flags.DEFINE_integer("inversion_steps", 500, "Adam steps of the inversion attack.")
    flags.DEFINE_integer("inversion_images", 32, "Scored images the inversion attack reconstructs.")
    flags.DEFINE_integer("train_images", 2000, "Training images the public-client attacker uses.")
    flags.DEFINE_integer("test_images", 1000, "Test images (leaked share + scored share).")
    flags.DEFINE_integer("recognizer_epochs", 20, "Epochs of the separate classifier that judges reconstructions.")
    app.run(main)
