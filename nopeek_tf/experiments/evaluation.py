"""Leakage evaluation of a trained model dir: attack its client and write what it leaks.

``python -m train.leakage`` and ``python -m train.sweep`` call :func:`evaluate_leakage`
and :func:`attack_model_dir`. Writes, beside the model (for an exported client
``--tflite=..._int8.tflite`` the names carry the variant: ``leakage_int8.json``):

  leakage.json          the worst case (attack, SSIM, PSNR), every attack's scores and budget, test dCor,
                        and the label-only reference (class means: what knowing the class alone gives)
  leakage.csv           one row per attack
  reconstructions.png   originals above each attack's reconstructions
  reconstructions.npz   the same images as arrays (the sweep builds its grid from them)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras
import numpy as np

from nopeek_tf import attacks
from nopeek_tf.experiments import plots

from nopeek_tf.training import data

from nopeek_tf import files
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.config import AttackBudget, EvaluationConfig
from nopeek_tf.core.dcor import mean_batch_dcor

RECOGNIZER_ARCH = "orl_cnn"  # judges reconstructions of your own model's images (any size from 16x16)
GRID_IMAGES = 8  # scored images kept in reconstructions.npz/png
# metrics.json settings copied into leakage.json, so that a result says what it attacked.
DESCRIBING_SETTINGS = ("test_accuracy", "alpha", "alpha_warmup_epochs", "alpha_ramp_epochs", "noise", "noise_scale",
                       "bottleneck", "bounded", "device_noise", "dataset", "arch", "cut")


@dataclasses.dataclass
class AttackData:
    """The images the attacks use: the attacker's auxiliary (train) images and the victims' (test) images."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_attack_data(dataset: str, data_dir: str | None, image_size, train_images: int,
                     test_images: int, channels: int | None = None, test_fraction: float = 0.2) -> AttackData:
    """The first ``train_images`` (0: all) training and ``test_images`` test images of a dataset, as float arrays
    (at ``image_size`` and ``channels`` when given: the model's input)."""
    raw = data.load(dataset, data_dir, image_size, channels, test_fraction)
    return AttackData(*data.to_arrays(raw.train, limit=train_images or None),
                      *data.to_arrays(raw.test, limit=test_images))


def train_recognizer(metrics: dict, images: np.ndarray, labels: np.ndarray, epochs: int) -> keras.Model:
    """A separate classifier trained on raw images, to judge reconstructions: the run's built-in
    architecture without NoPeek, or for your own model (``--model_file``, keras.applications) the
    built-in :data:`RECOGNIZER_ARCH`, which needs no batch statistics and learns in a few epochs.

    Not the attacked model: it would recognise an inverted image from the very
    activations the inversion matched.
    """
    from nopeek_tf.core import models

    keras.utils.set_random_seed(1)
    user_model = metrics.get("model_file") or metrics["arch"] not in models.ARCHITECTURES
    arch = RECOGNIZER_ARCH if user_model else metrics["arch"]
    cut = None if user_model else metrics["cut"]
    recognizer = models.build_split_model(arch, images.shape[1:], metrics["num_classes"], cut, alpha=0.0).full
    recognizer.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recognizer.fit(images, labels, batch_size=32, epochs=epochs, verbose=0)
    return recognizer


def tflite_client(path: str):
    """The exported client as the server receives it: float images -> float activations (int8 dequantized),
    with the device's noise when the manifest has one (fresh draws: each image is sent once).

    Returns:
      (the function, the client's variant name, the client's wire dtype).
    """
    from nopeek_tf.device import manifest as manifest_lib
    from nopeek_tf.device.litert import ClientRunner
    from nopeek_tf.device.noise import DeviceNoiseSource

    manifest = manifest_lib.Manifest.load(os.path.dirname(os.path.abspath(path)))
    runner = ClientRunner.from_file(path, manifest)
    if manifest.noise is None:
        return runner.from_float_images, runner.client.variant, runner.client.wire_dtype
    noise = DeviceNoiseSource(manifest.noise, memoise=False)
    return (lambda images: noise.draw(runner.from_float_images(images))), runner.client.variant, \
        runner.client.wire_dtype


def predicted_classes(split, activations: np.ndarray) -> np.ndarray:
    """The classes the server half answers for ``activations`` (what a label-aware attacker reads)."""
    return np.concatenate([keras.ops.convert_to_numpy(split.server(activations[start:start + 256], training=False))
                           .argmax(axis=1) for start in range(0, len(activations), 256)])


def attacker_classes(split, activations: np.ndarray, attack_data: "AttackData") -> np.ndarray:
    """The classes a label-aware attacker knows: the server's answers, or, for a split client's model dir (no
    server half here), the true labels, which the split server receives in the plain layout."""
    if split.server is None:
        return attack_data.test_labels
    return predicted_classes(split, activations)


def write_report(model_dir: str, result: dict, report: attacks.LeakageReport, test_images: np.ndarray) -> None:
    """Writes leakage.json, leakage.csv, reconstructions.png and reconstructions.npz (named by the client variant)."""
    variant = result["client"]
    files.write_json(model_dir_lib.leakage_file(model_dir, variant), result)
    files.write_csv(model_dir_lib.leakage_file(model_dir, variant, "leakage.csv"),
                    result["attacks"] + ([result["label_only"]] if result["label_only"] else []),
                    ["attack", "ssim", "psnr", "mse", "recognized_accuracy", "scored_images", "pairs", "epochs",
                     "seconds", "budget"])
    shown = report.scored_indices[:GRID_IMAGES]
    rows = {r.attack: r.reconstructions[:len(shown)] for r in report.results}
    plots.save_image_grid(model_dir_lib.leakage_file(model_dir, variant, "reconstructions.png"),
                          {"original": test_images[shown], **rows}, cell_inches=(1.3, 1.5))
    with files.atomic_path(model_dir_lib.leakage_file(model_dir, variant, model_dir_lib.RECONSTRUCTIONS_FILE)) as path:
        np.savez_compressed(path, original=test_images[shown], **rows)


def attack_model_dir(model_dir: str, attack_data: AttackData, recognizer: keras.Model | None = None,
                     tflite: str | None = None, budget: AttackBudget | None = None, seed: int = 0,
                     write: bool = True, progress: Callable[[str], None] | None = None
                     ) -> tuple[dict, attacks.LeakageReport]:
    """Attacks the client of ``model_dir`` on ``attack_data``.

    Args:
      model_dir: a model dir written by train.train.
      attack_data: the attacker's and the victims' images (see :func:`load_attack_data`).
      recognizer: a classifier trained on raw images that judges reconstructions, or None.
      tflite: attack this exported client file instead of the Keras client.
      budget: the attacks' budget (None: its defaults).
      seed: splits the test images into leaked and scored ones.
      write: write the report files (:func:`write_report`) to ``model_dir``.
      progress: gets one line as each attack finishes (``print``, say), or None.

    Returns:
      (the leakage.json content, the attacks' LeakageReport).
    """
    split, metrics = model_dir_lib.load(model_dir)
    budget = budget or AttackBudget()
    if tflite:
        client, variant, wire = tflite_client(tflite)
    else:
        client, variant, wire = split.sent_activations, "keras", "float32"
    test_activations = client(attack_data.test_images)
    report = attacks.run_attacks(attacks.AttackInput(
        client=client, client_model=split.client, train_images=attack_data.train_images,
        test_images=attack_data.test_images, test_labels=attack_data.test_labels, recognizer=recognizer,
        train_labels=attack_data.train_labels, test_predicted=attacker_classes(split, test_activations, attack_data)),
        budget, seed=seed, progress=progress)
    test_dcor, dcor_batch_size = mean_batch_dcor(attack_data.test_images, test_activations,
                                                 metrics["dcor_batch_size"])
    result = {**report.to_json(), "client": variant, "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size,
              **{key: metrics.get(key) for key in DESCRIBING_SETTINGS},
              **split.bound_report(metrics["num_classes"], wire),
              "budget": dataclasses.asdict(budget), "train_images": len(attack_data.train_images),
              "test_images": len(attack_data.test_images), "seed": seed}
    if write:
        write_report(model_dir, result, report, attack_data.test_images)
    return result, report


def evaluate_leakage(model_dir: str, tflite: str | None = None, budget: AttackBudget | None = None,
                     evaluation: EvaluationConfig | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Attacks the client of ``model_dir`` (its own recogniser and data) and writes the report files.

    Raises:
      nopeek_tf.model_dir.ModelDirError: no trained model in ``model_dir``.
      nopeek_tf.training.data.DatasetError: the dataset cannot be loaded.
    """
    evaluation = evaluation or EvaluationConfig()
    metrics = model_dir_lib.read_metrics(model_dir)
    shape = metrics["input_shape"]
    attack_data = load_attack_data(metrics["dataset"], metrics.get("data_dir"), shape[:2], evaluation.train_images,
                                   evaluation.test_images, shape[2], metrics.get("test_fraction", 0.2))
    recognizer = train_recognizer(metrics, attack_data.train_images, attack_data.train_labels,
                                  evaluation.recognizer_epochs)
    return attack_model_dir(model_dir, attack_data, recognizer, tflite, budget, evaluation.attack_seed,
                            progress=progress)[0]


def result_lines(result: dict) -> list[str]:
    """One line per attack, the label-only reference and the worst case (for the console)."""
    lines = []
    for attack in result["attacks"] + ([result["label_only"]] if result.get("label_only") else []):
        recognised = attack["recognized_accuracy"]
        lines.append(f"  {attack['attack']:22s} SSIM {attack['ssim']:.3f}  PSNR {attack['psnr']:5.1f} dB  recognised "
                     f"{'-' if recognised is None else format(recognised, '.3f')}  {attack.get('seconds', 0):.0f} s "
                     f"({attack['budget']})")
    excess = "" if result.get("excess_ssim") is None else (
        f", {result['excess_ssim']:+.3f} over the label-only floor {result['floor_ssim']:.3f}")
    lines.append(f"  worst case: {result['worst_attack']} SSIM {result['worst_ssim']:.3f}{excess}; test dCor "
                 f"{result['test_dcor']:.3f}")
    if result.get("bound_bits") is not None:
        lines.append(f"  bound: one request reveals at most {result['bound_bits']:.2f} bits about the image, whatever "
                     f"the attack (the class takes {result['label_bits']:.2f})")
    return lines
