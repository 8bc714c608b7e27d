r"""The privacy-utility sweep: NoPeek over alpha against the noise baselines, every model attacked.

  python -m train.sweep --dataset=fashion_mnist --workdir=runs/sweep_fashion \
      --alphas=0,1,3,10 --gaussian_noise=0.5,1,2 --uniform_noise=0.5,1,2 --epochs=2 --batch_size=128 \
      --train_images=10000 --test_images=2000

Every defence uses the same architecture, cut, training budget and attack
budget: alpha = 0 (no defence), NoPeek at each alpha (with the optional alpha
warm-up), and noise added to the activations the client sends (uniform and
Gaussian, scales relative to each sample's activation spread; the paper's
baseline). With several --cuts, each cut gets its own curves. Each model is
trained with train.train into <workdir>/<run> and attacked with train.leakage
(the leaked-pairs decoder, the public-client decoder and the inversion); a
finished run or attack is reused when the sweep runs again with the same flags.

Writes to --workdir:

  results.json, results.csv   one row per run: accuracy, test dCor, every attack's SSIM/PSNR, the worst case
  privacy_utility.png         accuracy against worst-case attack SSIM and against dCor, one curve per defence
  reconstructions.png         originals above reconstructions: a row per run, a column group per attack
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
from train import leakage, train

FLAGS = flags.FLAGS
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Defence:
    """One point of the sweep: a defence at one strength, at one cut."""

    kind: str  # "nopeek", "gaussian" or "uniform"; alpha 0 is "nopeek" at strength 0
    strength: float  # alpha, or the noise scale
    cut: str

    @property
    def name(self) -> str:
        """The run's folder name, e.g. conv2_alpha3 or conv2_gaussian0.5."""
        return f"{self.cut}_{'alpha' if self.kind == 'nopeek' else self.kind}{self.strength:g}"

    def curve(self, config: train.TrainConfig) -> str:
        """The curve the run belongs to in the plot, e.g. "NoPeek (cut dense, width x0.25, warm-up 0.5+0.5)"."""
        where = f"cut {self.cut}" + (f", width x{config.client_width:g}" if config.client_width != 1 else "")
        if self.kind != "nopeek":
            return f"{self.kind} noise ({where})"
        if config.alpha_warmup_epochs or config.alpha_ramp_epochs:
            where += f", warm-up {config.alpha_warmup_epochs:g}+{config.alpha_ramp_epochs:g}"
        return f"NoPeek ({where})"


def plan(alphas, gaussian, uniform, cuts, noise_cuts=None) -> list[Defence]:
    """The sweep's runs: alpha 0 first at each cut, then NoPeek, then the noise baselines (at ``noise_cuts``, default all)."""
    runs = []
    for cut in cuts:
        runs.append(Defence("nopeek", 0.0, cut))
        runs += [Defence("nopeek", alpha, cut) for alpha in alphas if alpha > 0]
        if noise_cuts is None or cut in noise_cuts:
            runs += [Defence("gaussian", scale, cut) for scale in gaussian]
            runs += [Defence("uniform", scale, cut) for scale in uniform]
    return list(dict.fromkeys(runs))


def train_config(base: train.TrainConfig, defence: Defence) -> train.TrainConfig:
    """The training config of one run."""
    if defence.kind == "nopeek":
        warm = defence.strength > 0
        return dataclasses.replace(base, cut=defence.cut, alpha=defence.strength,
                                   alpha_warmup_epochs=base.alpha_warmup_epochs if warm else 0.0,
                                   alpha_ramp_epochs=base.alpha_ramp_epochs if warm else 0.0)
    return dataclasses.replace(base, cut=defence.cut, alpha=0.0, alpha_warmup_epochs=0.0, alpha_ramp_epochs=0.0,
                               noise=defence.kind, noise_scale=defence.strength)


def _reusable_leakage(model_dir: str, budget, attack_data, seed: int) -> dict | None:
    path = os.path.join(model_dir, model_dir_lib.LEAKAGE_FILE)
    npz = os.path.join(model_dir, leakage.RECONSTRUCTIONS_FILE)
    if not (os.path.exists(path) and os.path.exists(npz)):
        return None
    with open(path) as f:
        result = json.load(f)
    same = (result.get("budget") == dataclasses.asdict(budget) and result.get("client") == "keras"
            and result.get("train_images") == len(attack_data.train_images)
            and result.get("test_images") == len(attack_data.test_images) and result.get("seed") == seed)
    if same and os.path.getmtime(path) >= os.path.getmtime(os.path.join(model_dir, model_dir_lib.MODEL_FILE)):
        return result
    return None


def _finished_metrics(model_dir: str, config: train.TrainConfig) -> dict | None:
    """metrics.json of a finished run of ``config`` in ``model_dir``, or None (then it is trained)."""
    path = os.path.join(model_dir, model_dir_lib.METRICS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    ignore = [key for key in train.RESUMABLE_CHANGES if key != "epochs"]
    ignore += [key for key in ("arch", "cut") if getattr(config, key) == "auto"]
    return None if train.changed_settings(metrics, config, ignore) else metrics


def result_row(defence: Defence, config: train.TrainConfig, base: train.TrainConfig, result: dict) -> dict:
    """One flat row of results.csv (``config``: the run's; ``base``: the sweep's, which names the curve)."""
    row = {"run": defence.name, "defence": defence.kind, "strength": defence.strength, "cut": defence.cut,
           "curve": defence.curve(base), "client_width": config.client_width,
           "alpha_warmup_epochs": config.alpha_warmup_epochs,
           "alpha_ramp_epochs": config.alpha_ramp_epochs, "test_accuracy": result["test_accuracy"], "test_dcor": result["test_dcor"],
           "worst_attack": result["worst_attack"], "worst_ssim": result["worst_ssim"],
           "worst_psnr": result["worst_psnr"]}
    for attack in result["attacks"]:
        row[f"{attack['attack']}_ssim"] = attack["ssim"]
        row[f"{attack['attack']}_psnr"] = attack["psnr"]
        row[f"{attack['attack']}_recognized"] = attack["recognized_accuracy"]
    if result.get("label_only"):
        row["label_only_ssim"] = result["label_only"]["ssim"]
    return row


def save_plot(path: str, rows: list[dict], dataset: str) -> None:
    """Accuracy against worst-case SSIM and against test dCor, one curve per defence (from its alpha-0 model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    undefended = {row["cut"]: row for row in rows if row["defence"] == "nopeek" and row["strength"] == 0}
    curves = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    for curve, members in curves.items():
        start = undefended.get(members[0]["cut"])
        points = sorted(members + ([start] if start and start not in members else []), key=lambda r: r["strength"])
        for axis, x in zip(axes, ("worst_ssim", "test_dcor")):
            line, = axis.plot([p[x] for p in points], [p["test_accuracy"] for p in points], "o-", label=curve)
            for point in points:
                axis.annotate(f"{point['strength']:g}", (point[x], point["test_accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3), color=line.get_color())
    label_only = [row["label_only_ssim"] for row in rows if row.get("label_only_ssim") is not None]
    if label_only:
        axes[0].axvline(label_only[0], color="grey", linestyle=":", label="label-only reference")
    axes[0].set_xlabel("worst-case attack SSIM (lower = more private)")
    axes[1].set_xlabel("test dCor(image, activations)")
    for axis in axes:
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{dataset}: privacy-utility trade-off (labels: alpha or noise scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_reconstruction_grid(path: str, run_dirs: dict[str, str], images_per_attack: int = 4) -> None:
    """Originals on top, then a row per run; a column group per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arrays = {name: np.load(os.path.join(folder, leakage.RECONSTRUCTIONS_FILE)) for name, folder in run_dirs.items()}
    attack_names = [name for name in next(iter(arrays.values())).files if name != "original"]
    originals = next(iter(arrays.values()))["original"][:images_per_attack]
    count = len(originals)
    columns = count * len(attack_names)
    rows = ["original", *arrays]
    figure, axes = plt.subplots(len(rows), columns, figsize=(0.9 * columns, 0.95 * len(rows) + 0.4), squeeze=False)
    for row_index, row in enumerate(rows):
        for group, attack in enumerate(attack_names):
            for column in range(count):
                axis = axes[row_index][group * count + column]
                image = originals[column] if row == "original" else arrays[row][attack][column]
                axis.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
                axis.set_xticks([])
                axis.set_yticks([])
                if row_index == 0 and column == 0:
                    axis.set_title(attack, fontsize=8, loc="left")
        axes[row_index][0].set_ylabel(row, fontsize=7, rotation=0, ha="right", va="center")
    figure.tight_layout(pad=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_rows(workdir: str) -> list[dict]:
    """The rows of an earlier sweep's results.json; UsageError if there is none."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        raise train.UsageError(f"--plot_with: {path} does not exist (run that sweep first)")
    with open(path) as f:
        return json.load(f)["runs"]


def run_sweep(base: train.TrainConfig, defences: list[Defence], workdir: str, budget, train_images: int,
              test_images: int, recognizer_epochs: int, seed: int = 0,
              plot_with: list[str] | None = None) -> list[dict]:
    """Trains and attacks every defence; writes results.json/csv and both pictures to ``workdir``.

    ``plot_with`` names earlier sweeps' workdirs whose curves the plot also draws
    (curves of the same name are this sweep's).

    Returns:
      The rows of results.csv.
    """
    import keras
    import numpy as np

    os.makedirs(workdir, exist_ok=True)
    attack_data = None
    recognizer = None
    rows, run_dirs = [], {}
    for index, defence in enumerate(defences, 1):
        model_dir = os.path.join(workdir, defence.name)
        config = train_config(base, defence)
        metrics = _finished_metrics(model_dir, config)
        if metrics is None:
            print(f"[{index}/{len(defences)}] {defence.name}: training", flush=True)
            metrics = train.train_and_evaluate(config, model_dir)
        else:
            print(f"[{index}/{len(defences)}] {defence.name}: reusing the trained model", flush=True)
        if attack_data is None:
            attack_data = leakage.load_attack_data(base.dataset, base.data_dir, base.image_size, train_images,
                                                   test_images)
        result = _reusable_leakage(model_dir, budget, attack_data, seed)
        if result is None:
            if recognizer is None:
                print(f"training the recognizer on {len(attack_data.train_images)} raw images", flush=True)
                recognizer = leakage.train_recognizer(metrics, attack_data.train_images, attack_data.train_labels,
                                                      recognizer_epochs)
            print(f"[{index}/{len(defences)}] {defence.name}: attacking", flush=True)
            result, _ = leakage.attack_model_dir(model_dir, attack_data, recognizer, budget=budget, seed=seed)
            keras.backend.clear_session()
        else:
            print(f"[{index}/{len(defences)}] {defence.name}: reusing {model_dir_lib.LEAKAGE_FILE}", flush=True)
        leakage.print_result(result)
        rows.append(result_row(defence, config, base, {**result, "test_accuracy": metrics["test_accuracy"]}))
        run_dirs[defence.name] = model_dir

    summary = {"dataset": base.dataset, "train_config": base.to_json(), "budget": dataclasses.asdict(budget),
               "train_images": train_images, "test_images": test_images, "runs": rows}
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(summary, f, indent=2, default=lambda value: value.item() if isinstance(value, np.generic) else value)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    plotted = rows + [row for other in plot_with or [] for row in load_rows(other)
                      if row["curve"] not in {mine["curve"] for mine in rows}]
    save_plot(os.path.join(workdir, "privacy_utility.png"), plotted, base.dataset)
    save_reconstruction_grid(os.path.join(workdir, "reconstructions.png"), run_dirs)
    return rows


def print_table(rows: list[dict]) -> None:
    """The results as a Markdown table (paste into the README)."""
    attacks = [key[:-5] for key in rows[0] if key.endswith("_ssim") and key not in ("worst_ssim", "label_only_ssim")]
    print("| run | test accuracy | test dCor | " + " | ".join(f"{a} SSIM" for a in attacks) + " | worst SSIM |")
    print("|---|---|---|" + "---|" * len(attacks) + "---|")
    for row in rows:
        print(f"| {row['run']} | {row['test_accuracy']:.3f} | {row['test_dcor']:.3f} | "
              + " | ".join(f"{row.get(a + '_ssim', float('nan')):.3f}" for a in attacks)
              + f" | {row['worst_ssim']:.3f} ({row['worst_attack']}) |")
    if rows[0].get("label_only_ssim") is not None:
        print(f"label-only reference SSIM: {rows[0]['label_only_ssim']:.3f}")


def resolve_cuts(base: train.TrainConfig, cuts: list[str]) -> list[str]:
    """The cuts by name ("auto" becomes the architecture's default), so that run folders say where the cut is."""
    from nopeek_tf import models

    arch = base.arch if base.arch != "auto" else train.DEFAULT_ARCH_FOR_DATASET.get(base.dataset)
    if arch is None:
        return cuts
    try:
        return list(dict.fromkeys(models.resolve_cut(arch, cut) for cut in cuts or ["auto"]))
    except ValueError as error:
        raise train.UsageError(f"--cuts: {error}") from None


def _floats(name: str) -> list[float]:
    try:
        values = [float(value) for value in FLAGS[name].value or []]
    except ValueError:
        raise train.UsageError(f"--{name} must be a comma-separated list of numbers, got "
                               f"{','.join(FLAGS[name].value)!r}") from None
    if any(value < 0 for value in values):
        raise train.UsageError(f"--{name} values must be >= 0")
    return values


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.data import DatasetError

    try:
        base = train.TrainConfig(
            dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, image_size=train.parse_image_size(FLAGS.image_size),
            arch=FLAGS.arch, client_width=FLAGS.client_width, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate,
            seed=FLAGS.seed, alpha_warmup_epochs=FLAGS.alpha_warmup_epochs,
            alpha_ramp_epochs=FLAGS.alpha_ramp_epochs, dcor_batch_size=FLAGS.dcor_batch_size, verbose=0)
        defences = plan(_floats("alphas"), [s for s in _floats("gaussian_noise") if s > 0],
                        [s for s in _floats("uniform_noise") if s > 0], resolve_cuts(base, FLAGS.cuts),
                        resolve_cuts(base, FLAGS.noise_cuts) if FLAGS.noise_cuts else None)
        budget = leakage.budget_from_flags()
        for other in FLAGS.plot_with or []:
            load_rows(other)  # fail before hours of work, not after
        rows = run_sweep(base, defences, FLAGS.workdir, budget, FLAGS.train_images, FLAGS.test_images,
                         FLAGS.recognizer_epochs, FLAGS.seed, FLAGS.plot_with)
    except (train.UsageError, leakage.LeakageError) as error:
        sys.exit(f"error: {error}")
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    print_table(rows)
    print(f"wrote {FLAGS.workdir}/{RESULTS_FILE}, results.csv, privacy_utility.png, reconstructions.png")


if __name__ == "__main__":
    flags.DEFINE_string("dataset", "orl_faces", "orl_faces, fashion_mnist, or any TFDS name (see train.train).")
    flags.DEFINE_string("data_dir", None, "See train.train.")
    flags.DEFINE_string("image_size", None, "Resize images to HEIGHTxWIDTH (e.g. 56x46 for ORL at half size).")
    flags.DEFINE_string("arch", "auto", "Architecture (see train.train).")
    flags.DEFINE_list("cuts", ["auto"], "Cuts to sweep, each with its own curves (e.g. conv2,conv3).")
    flags.DEFINE_float("client_width", 1.0, "Every run's client width multiplier (see train.train).")
    flags.DEFINE_list("noise_cuts", None, "Cuts at which to run the noise baselines (default: every cut).")
    flags.DEFINE_list("alphas", ["0", "1", "3", "10"], "NoPeek weights (0 is the undefended model, always run).")
    flags.DEFINE_list("gaussian_noise", ["0.5", "1", "2"], "Gaussian noise scales (std relative to each "
                      "sample's activation std); empty for none.")
    flags.DEFINE_list("uniform_noise", ["0.5", "1", "2"], "Uniform noise scales (same units); empty for none.")
    flags.DEFINE_float("alpha_warmup_epochs", 0.0, "NoPeek runs: epochs with alpha 0 first.")
    flags.DEFINE_float("alpha_ramp_epochs", 0.0, "NoPeek runs: then a linear ramp to alpha over this many epochs.")
    flags.DEFINE_integer("epochs", 40, "Training epochs of every run.")
    flags.DEFINE_integer("batch_size", 32, "Training batch size.")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Seed of training and of the leaked/scored split.")
    flags.DEFINE_integer("dcor_batch_size", 100, "Batch size of the test dCor.")
    flags.DEFINE_string("workdir", None, "Folder of the runs and the results.", required=True)
    flags.DEFINE_list("plot_with", None, "Earlier sweeps' workdirs whose curves the plot also draws "
                      "(e.g. a baseline sweep next to a warm-up sweep).")
    leakage.define_attack_flags()
    app.run(main)
