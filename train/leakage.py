r"""Attacks a trained model dir's client and writes what it leaks.

  python -m train.leakage --model_dir=runs/quickstart

Runs nopeek_tf.attacks.run_attacks on the client half (the Keras client, or
with --tflite the exported client as a device runs it, int8 included), scored
on held-out test images, and writes to the model dir:

  leakage.json          the worst case (attack, SSIM, PSNR), every attack's scores and budget, test dCor,
                        and the label-only reference (class means: what knowing the class alone gives)
  leakage.csv           one row per attack
  reconstructions.png   originals above each attack's reconstructions
  reconstructions.npz   the same images as arrays (train.sweep builds its grid from them)

With --tflite=<export dir>/<client>_int8.tflite the files are named after the
variant (leakage_int8.json, ...). The exporter copies the Keras client's worst
case into the manifest (its privacy card).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime

RECONSTRUCTIONS_FILE = "reconstructions.npz"  # the first GRID_IMAGES scored images and each attack's reconstructions
GRID_IMAGES = 8
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


@dataclasses.dataclass
class AttackData:
    """The images the attacks use: the attacker's auxiliary (train) images and the victims' (test) images."""

    train_images: "np.ndarray"
    train_labels: "np.ndarray"
    test_images: "np.ndarray"
    test_labels: "np.ndarray"


def load_attack_data(dataset: str, data_dir: str | None, image_size, train_images: int,
                     test_images: int) -> AttackData:
    """The first ``train_images`` training and ``test_images`` test images of a dataset, as float arrays."""
    from nopeek_tf import data

    raw = data.load(dataset, data_dir)
    return AttackData(*_arrays(raw.train, image_size, train_images), *_arrays(raw.test, image_size, test_images))


def attack_model_dir(model_dir: str, attack_data: AttackData, recognizer=None, tflite: str | None = None,
                     budget=None, seed: int = 0, write: bool = True) -> tuple[dict, object]:
    """Attacks the client of ``model_dir`` on ``attack_data``.

    Args:
      model_dir: a model dir written by train.train.
      attack_data: the attacker's and the victims' images (see :func:`load_attack_data`).
      recognizer: a classifier trained on raw images that judges reconstructions, or None.
      tflite: attack this exported client file instead of the Keras client.
      budget: a nopeek_tf.attacks.AttackBudget (None: its defaults).
      seed: splits the test images into leaked and scored ones.
      write: write leakage.json, leakage.csv and reconstructions.png to ``model_dir``.

    Returns:
      (the leakage.json content, the nopeek_tf.attacks.LeakageReport).
    """
    import numpy as np
    import tensorflow as tf

    from nopeek_tf import attacks, leakage

    split, metrics = model_dir_lib.load(model_dir)
    budget = budget or attacks.AttackBudget()
    if tflite:
        client, variant = tflite_client(tflite)
    else:
        client, variant = split.sent_activations, "keras"
    report = attacks.run_attacks(attacks.AttackInput(
        client=client, client_model=split.client, train_images=attack_data.train_images,
        test_images=attack_data.test_images, test_labels=attack_data.test_labels, recognizer=recognizer,
        train_labels=attack_data.train_labels), budget, seed=seed)
    test_dcor, dcor_batch_size = leakage.mean_batch_dcor(
        lambda x, training=False: client(np.asarray(x)), tf.data.Dataset.from_tensor_slices(attack_data.test_images),
        metrics["dcor_batch_size"])
    result = {**report.to_json(), "client": variant, "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size,
              **{key: metrics.get(key) for key in ("test_accuracy", "alpha", "alpha_warmup_epochs",
                                                   "alpha_ramp_epochs", "noise", "noise_scale", "dataset", "arch",
                                                   "cut")},
              "budget": dataclasses.asdict(budget), "train_images": len(attack_data.train_images),
              "test_images": len(attack_data.test_images), "seed": seed}
    if write:
        suffix = "" if variant == "keras" else f"_{variant}"  # an exported client's results sit beside the Keras one's
        with open(os.path.join(model_dir, model_dir_lib.LEAKAGE_FILE.replace(".json", f"{suffix}.json")), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(model_dir, f"leakage{suffix}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["attack", "ssim", "psnr", "mse", "recognized_accuracy", "scored_images",
                                        "budget"])
            writer.writeheader()
            for attack in result["attacks"] + ([result["label_only"]] if result["label_only"] else []):
                writer.writerow(attack)
        shown = report.scored_indices[:GRID_IMAGES]
        rows = {r.attack: r.reconstructions[:len(shown)] for r in report.results}
        save_grid(os.path.join(model_dir, f"reconstructions{suffix}.png"), attack_data.test_images[shown], rows)
        np.savez_compressed(os.path.join(model_dir, RECONSTRUCTIONS_FILE.replace(".npz", f"{suffix}.npz")),
                            original=attack_data.test_images[shown], **rows)
    return result, report


def evaluate_leakage(model_dir: str, tflite: str | None = None, budget=None, train_images: int = 2000,
                     test_images: int = 1000, seed: int = 0, recognizer_epochs: int = 20) -> dict:
    """Attacks the client of ``model_dir`` and writes leakage.json, leakage.csv and reconstructions.png."""
    metrics = model_dir_lib.read_metrics(model_dir)
    attack_data = load_attack_data(metrics["dataset"], metrics.get("data_dir"), metrics.get("image_size"),
                                   train_images, test_images)
    recognizer = train_recognizer(metrics, attack_data.train_images, attack_data.train_labels, recognizer_epochs)
    return attack_model_dir(model_dir, attack_data, recognizer, tflite, budget, seed)[0]


def define_attack_flags() -> None:
    """The attack budget and data flags (shared with train.sweep)."""
    flags.DEFINE_integer("decoder_epochs", 40, "Most epochs of each decoder attack (stops early when converged).")
    flags.DEFINE_integer("decoder_width", 64, "Filters of the decoder's convolutions.")
    flags.DEFINE_integer("inversion_steps", 500, "Adam steps of the inversion attack.")
    flags.DEFINE_integer("inversion_images", 32, "Scored images the inversion attack reconstructs.")
    flags.DEFINE_float("leaked_fraction", 0.9, "Share of the test images whose (image, activation) pairs leak; "
                       "the attacks are scored on the rest.")
    flags.DEFINE_integer("train_images", 2000, "Training images the public-client attacker uses.")
    flags.DEFINE_integer("test_images", 1000, "Test images (leaked share + scored share).")
    flags.DEFINE_integer("recognizer_epochs", 20, "Epochs of the separate classifier that judges reconstructions.")


def budget_from_flags():
    """The nopeek_tf.attacks.AttackBudget the flags describe; LeakageError names a bad flag."""
    from nopeek_tf import attacks

    for name in ("decoder_epochs", "decoder_width", "inversion_steps", "inversion_images", "train_images",
                 "test_images", "recognizer_epochs"):
        if getattr(FLAGS, name) < 1:
            raise LeakageError(f"--{name} must be at least 1, got {getattr(FLAGS, name)}")
    if not 0 < FLAGS.leaked_fraction < 1:
        raise LeakageError(f"--leaked_fraction must be between 0 and 1, got {FLAGS.leaked_fraction}")
    return attacks.AttackBudget(decoder_epochs=FLAGS.decoder_epochs, decoder_width=FLAGS.decoder_width,
                                inversion_steps=FLAGS.inversion_steps, inversion_images=FLAGS.inversion_images,
                                leaked_fraction=FLAGS.leaked_fraction)


def print_result(result: dict) -> None:
    """One line per attack, the label-only reference and the worst case."""
    for attack in result["attacks"] + ([result["label_only"]] if result.get("label_only") else []):
        recognised = attack["recognized_accuracy"]
        print(f"  {attack['attack']:14s} SSIM {attack['ssim']:.3f}  PSNR {attack['psnr']:5.1f} dB  recognised "
              f"{'-' if recognised is None else format(recognised, '.3f')}  ({attack['budget']})", flush=True)
    print(f"  worst case: {result['worst_attack']} SSIM {result['worst_ssim']:.3f}; test dCor "
          f"{result['test_dcor']:.3f}", flush=True)


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.data import DatasetError

    try:
        result = evaluate_leakage(FLAGS.model_dir, FLAGS.tflite, budget_from_flags(), FLAGS.train_images,
                                  FLAGS.test_images, recognizer_epochs=FLAGS.recognizer_epochs)
    except (LeakageError, DatasetError, model_dir_lib.ModelDirError) as error:
        sys.exit(f"error: {error}")
    print_result(result)
    suffix = "" if result["client"] == "keras" else f"_{result['client']}"
    print(f"wrote {FLAGS.model_dir}/{model_dir_lib.LEAKAGE_FILE.replace('.json', suffix + '.json')}")


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "A model dir written by python -m train.train.", required=True)
    flags.DEFINE_string("tflite", None, "Attack this exported client .tflite instead of the Keras client.")
    define_attack_flags()
    app.run(main)
