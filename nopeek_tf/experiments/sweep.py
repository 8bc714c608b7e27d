"""The privacy-utility sweep: NoPeek over alpha against the noise baselines, every model attacked.

Every defence uses the same architecture, cut, training budget and attack
budget: alpha = 0 (no defence), NoPeek at each alpha (with the optional alpha
warm-up), and noise added to the activations the client sends (uniform and
Gaussian, scales relative to each sample's activation spread; the paper's
baseline). With several cuts, each cut gets its own curves. Each model is
trained into ``<sweep_dir>/<run>`` and attacked; a finished run or attack is
reused when the sweep runs again with the same settings.

``python -m train.sweep --config=NAME`` runs a configuration module of
``train/configs/`` (its docstring holds the command). Writes to the sweep dir:

  results.json, results.csv   one row per run: accuracy, test dCor, every attack's SSIM/PSNR, the worst case
  privacy_utility.png         accuracy against worst-case attack SSIM and against dCor, one curve per defence
  reconstructions.png         originals above reconstructions: a row per run, a column group per attack
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from nopeek_tf import files

from nopeek_tf.experiments import plots
from nopeek_tf.device import bound
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.config import (AttackBudget, ConfigError, EvaluationConfig, Settings, TrainConfig, default_arch,
                              resumable_fields, setting)

RESULTS_FILE = "results.json"
# What the device sends and computes, from metrics.json (beside every row: what protection costs).
SIZE_KEYS = ("activation_bytes_int8", "activation_bytes_float32", "client_flops_share")
GRID_IMAGES_PER_ATTACK = 4


@dataclasses.dataclass(frozen=True)
class SweepConfig(Settings):
    """The sweep's axes and outputs (``python -m train.sweep``; the training settings are a TrainConfig)."""

    sweep_dir: str | None = setting(None, "Folder of the runs and the results (required, here or in --config).")
    cuts: tuple[str, ...] = setting(("auto",), "Cuts to sweep, each with its own curves (e.g. conv2,conv3).")
    noise_cuts: tuple[str, ...] | None = setting(None, "Cuts at which to run the noise baselines (default: "
                                                 "every cut).")
    alphas: tuple[float, ...] = setting((0.0, 1.0, 3.0, 10.0), "NoPeek weights (0 is the undefended model, "
                                        "always run).", minimum=0)
    gaussian_noise: tuple[float, ...] = setting((0.5, 1.0, 2.0), "Gaussian noise scales (std relative to each "
                                                "sample's activation std); empty for none.", minimum=0)
    uniform_noise: tuple[float, ...] = setting((0.5, 1.0, 2.0), "Uniform noise scales (same units); empty for "
                                               "none.", minimum=0)
    adversary_weights: tuple[float, ...] = setting((), "Attacker-aware training at these penalty weights (the "
                                                   "--adversary_* flags set the rest); empty for none.", minimum=0)
    adversary_alpha: float = setting(0.0, "NoPeek's alpha in the attacker-aware runs (0: the adversary alone).",
                                     minimum=0)
    plot_with: tuple[str, ...] | None = setting(None, "Earlier sweeps' dirs whose curves the plot also draws "
                                                "(e.g. a baseline sweep next to a warm-up sweep).")

    def validate(self) -> None:
        super().validate()
        if not self.sweep_dir:
            raise ConfigError("--sweep_dir is required (the folder of the runs and the results)")
        for other in self.plot_with or ():
            load_rows(other)  # fail before hours of work, not after


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep needs; what a configuration module's ``get_config()`` returns."""

    sweep: SweepConfig = SweepConfig()
    train: TrainConfig = TrainConfig(verbose=0)
    budget: AttackBudget = AttackBudget()
    evaluation: EvaluationConfig = EvaluationConfig()


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of the sweep: a defence at one strength, at one cut."""

    kind: str  # "nopeek", "gaussian", "uniform" or "adversary"; alpha 0 is "nopeek" at strength 0
    strength: float  # alpha, the noise scale, or the attacker-aware penalty's weight
    cut: str

    @property
    def name(self) -> str:
        """The run's folder name, e.g. conv2_alpha3, conv2_gaussian0.5 or conv2_adversary1."""
        return f"{self.cut}_{'alpha' if self.kind == 'nopeek' else self.kind}{self.strength:g}"

    def curve(self, config: TrainConfig) -> str:
        """The curve the run belongs to in the plot, e.g. "NoPeek (cut dense, width x0.25, warm-up 0.5+0.5)"."""
        where = f"cut {self.cut}" + (f", width x{config.client_width:g}" if config.client_width != 1 else "")
        where += f", bottleneck {config.bottleneck}" if config.bottleneck else ""
        if self.kind == "adversary":
            alpha = f", alpha {config.alpha:g}" if config.alpha else ""
            return f"attacker-aware ({where}{alpha}{', label-aware' if config.adversary_label_aware else ''})"
        if self.kind != "nopeek":
            return f"{self.kind} noise ({where})"
        warmup, ramp = config.alpha_warmup_epochs, config.alpha_ramp_epochs
        if warmup or ramp:
            where += ", warm-up " + "+".join("auto" if epochs is None else f"{epochs:g}" for epochs in (warmup, ramp))
        return f"NoPeek ({where})"


def plan(alphas, gaussian, uniform, cuts, noise_cuts=None, adversary_weights=()) -> list[SweepPoint]:
    """The sweep's runs: alpha 0 first at each cut, then NoPeek, the noise baselines (at ``noise_cuts``,
    default all) and attacker-aware training."""
    runs = []
    for cut in cuts:
        runs.append(SweepPoint("nopeek", 0.0, cut))
        runs += [SweepPoint("nopeek", alpha, cut) for alpha in alphas if alpha > 0]
        if noise_cuts is None or cut in noise_cuts:
            runs += [SweepPoint("gaussian", scale, cut) for scale in gaussian if scale > 0]
            runs += [SweepPoint("uniform", scale, cut) for scale in uniform if scale > 0]
        runs += [SweepPoint("adversary", weight, cut) for weight in adversary_weights if weight > 0]
    return list(dict.fromkeys(runs))


def resolve_cuts(base: TrainConfig, cuts) -> list[str]:
    """The cuts by name ("auto" becomes the architecture's default), so that run folders say where the cut is."""
    from nopeek_tf.core import models

    arch = base.arch if base.arch != "auto" else default_arch(base.dataset)
    if arch is None:
        return list(cuts)
    try:
        return list(dict.fromkeys(models.resolve_cut(arch, cut) for cut in cuts or ["auto"]))
    except ValueError as error:
        raise ConfigError(f"--cuts: {error}") from None


def plan_settings(settings: SweepSettings) -> list[SweepPoint]:
    """The runs a SweepSettings asks for."""
    sweep = settings.sweep
    return plan(sweep.alphas, sweep.gaussian_noise, sweep.uniform_noise, resolve_cuts(settings.train, sweep.cuts),
                resolve_cuts(settings.train, sweep.noise_cuts) if sweep.noise_cuts else None, sweep.adversary_weights)


def train_config(base: TrainConfig, defence: SweepPoint, adversary_alpha: float = 0.0) -> TrainConfig:
    """The training config of one run (the base's adversary settings apply to attacker-aware runs only)."""
    base = dataclasses.replace(base, adversary_weight=0.0)
    if defence.kind == "adversary":
        return dataclasses.replace(base, cut=defence.cut, alpha=adversary_alpha, adversary_weight=defence.strength,
                                   alpha_warmup_epochs=base.alpha_warmup_epochs if adversary_alpha else 0.0,
                                   alpha_ramp_epochs=base.alpha_ramp_epochs if adversary_alpha else 0.0)
    if defence.kind == "nopeek":
        warm = defence.strength > 0
        return dataclasses.replace(base, cut=defence.cut, alpha=defence.strength,
                                   alpha_warmup_epochs=base.alpha_warmup_epochs if warm else 0.0,
                                   alpha_ramp_epochs=base.alpha_ramp_epochs if warm else 0.0)
    return dataclasses.replace(base, cut=defence.cut, alpha=0.0, alpha_warmup_epochs=0.0, alpha_ramp_epochs=0.0,
                               noise=defence.kind, noise_scale=defence.strength)


def finished_metrics(model_dir: str, config: TrainConfig) -> dict | None:
    """metrics.json of a finished run of ``config`` (the same epochs too), or None (then it is trained)."""
    return model_dir_lib.finished_metrics(model_dir, config,
                                          ignore=[key for key in resumable_fields(TrainConfig) if key != "epochs"])


def reusable_leakage(model_dir: str, budget: AttackBudget, evaluation: EvaluationConfig) -> dict | None:
    """The Keras client's leakage.json if it was written after the model with the same budget and images."""
    result = model_dir_lib.read_leakage(model_dir)
    if result is None or not os.path.exists(os.path.join(model_dir, model_dir_lib.RECONSTRUCTIONS_FILE)):
        return None
    from nopeek_tf.attacks import ATTACKS

    same = (result.get("budget") == dataclasses.asdict(budget) and result.get("client") == "keras"
            and {attack["attack"] for attack in result.get("attacks", [])} == set(ATTACKS)
            and result.get("train_images") == (evaluation.train_images or result.get("train_images"))
            and result.get("test_images") == evaluation.test_images and result.get("seed") == evaluation.attack_seed)
    if same and os.path.getmtime(model_dir_lib.leakage_file(model_dir)) >= os.path.getmtime(os.path.join(model_dir, model_dir_lib.MODEL_FILE)):
        return result
    return None


def result_row(defence: SweepPoint, config: TrainConfig, base: TrainConfig, result: dict) -> dict:
    """One flat row of results.csv (``config``: the run's; ``base``: the sweep's, which names the curve)."""
    row = {"run": defence.name, "defence": defence.kind, "strength": defence.strength, "cut": defence.cut,
           "curve": defence.curve(config if defence.kind == "adversary" else base), "client_width": config.client_width,
           "alpha_warmup_epochs": config.alpha_warmup_epochs, "alpha_ramp_epochs": config.alpha_ramp_epochs,
           "bottleneck": config.bottleneck, "bounded": config.bounded, "device_noise": config.device_noise,
           "bound_bits": result.get("bound_bits"), "label_bits": result.get("label_bits"),
           "test_accuracy": result["test_accuracy"], "test_dcor": result["test_dcor"],
           **{key: result.get(key) for key in SIZE_KEYS},
           "worst_attack": result["worst_attack"], "worst_ssim": result["worst_ssim"],
           "worst_psnr": result["worst_psnr"], "floor_ssim": result.get("floor_ssim"),
           "excess_ssim": result.get("excess_ssim")}
    for attack in result["attacks"]:
        row[f"{attack['attack']}_ssim"] = attack["ssim"]
        row[f"{attack['attack']}_psnr"] = attack["psnr"]
        row[f"{attack['attack']}_recognized"] = attack["recognized_accuracy"]
    if result.get("label_only"):
        row["label_only_ssim"] = result["label_only"]["ssim"]
    return row


def load_rows(sweep_dir: str) -> list[dict]:
    """The rows of an earlier sweep's results.json; ConfigError if there is none."""
    path = os.path.join(sweep_dir, RESULTS_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"--plot_with: {path} does not exist (run that sweep first)")
    with open(path) as f:
        return json.load(f)["runs"]


def save_reconstruction_grid(path: str, run_dirs: dict[str, str]) -> None:
    """Originals on top, then a row per run; a column group per attack."""
    arrays = {name: np.load(os.path.join(folder, model_dir_lib.RECONSTRUCTIONS_FILE))
              for name, folder in run_dirs.items()}
    first = next(iter(arrays.values()))
    attack_names = [name for name in first.files if name != "original"]
    count = GRID_IMAGES_PER_ATTACK
    rows = {"original": np.concatenate([first["original"][:count]] * len(attack_names))}
    rows.update({run: np.concatenate([images[attack][:count] for attack in attack_names])
                 for run, images in arrays.items()})
    plots.save_image_grid(path, rows, group_titles=attack_names, cell_inches=(0.9, 0.95))


def run_sweep(settings: SweepSettings, defences: list[SweepPoint] | None = None, log=print) -> list[dict]:
    """Trains and attacks every defence; writes results.json/csv and both pictures to the sweep dir.

    Args:
      settings: the sweep (its axes, the base training config, the attack budget and images).
      defences: the runs (default: :func:`plan_settings`).
      log: where progress lines go.

    Returns:
      The rows of results.csv.
    """
    import keras

    from nopeek_tf.experiments import evaluation
    from nopeek_tf.training import train_and_evaluate

    settings.sweep.validate()
    base, budget, images = settings.train, settings.budget, settings.evaluation
    defences = plan_settings(settings) if defences is None else defences
    sweep_dir = settings.sweep.sweep_dir
    os.makedirs(sweep_dir, exist_ok=True)
    attack_data = recognizer = None
    rows, run_dirs = [], {}
    for index, defence in enumerate(defences, 1):
        step = f"[{index}/{len(defences)}] {defence.name}"
        model_dir = os.path.join(sweep_dir, defence.name)
        config = train_config(base, defence, settings.sweep.adversary_alpha)
        metrics = finished_metrics(model_dir, config)
        if metrics is None:
            log(f"{step}: training")
            metrics = train_and_evaluate(config, model_dir)
        else:
            log(f"{step}: reusing the trained model")
        result = reusable_leakage(model_dir, budget, images)
        if result is None:
            if attack_data is None:
                shape = metrics["input_shape"]
                attack_data = evaluation.load_attack_data(base.dataset, base.data_dir, shape[:2],
                                                          images.train_images, images.test_images, shape[2],
                                                          base.test_fraction)
                log(f"training the recognizer on {len(attack_data.train_images)} raw images")
                recognizer = evaluation.train_recognizer(metrics, attack_data.train_images, attack_data.train_labels,
                                                         images.recognizer_epochs)
            log(f"{step}: attacking")
            result, _ = evaluation.attack_model_dir(model_dir, attack_data, recognizer, budget=budget,
                                                    seed=images.attack_seed, progress=log)
            keras.backend.clear_session()
        else:
            log(f"{step}: reusing {model_dir_lib.LEAKAGE_FILE}")
        log("\n".join(evaluation.result_lines(result)))
        rows.append(result_row(defence, config, base, {**result, "test_accuracy": metrics["test_accuracy"],
                                                       **{key: metrics.get(key) for key in SIZE_KEYS}}))
        run_dirs[defence.name] = model_dir

    summary = {"dataset": base.dataset, "train_config": base.to_json(), "budget": dataclasses.asdict(budget),
               "train_images": images.train_images, "test_images": images.test_images, "runs": rows}
    files.write_json(os.path.join(sweep_dir, RESULTS_FILE), summary)
    files.write_csv(os.path.join(sweep_dir, "results.csv"), rows)
    plotted = rows + [row for other in settings.sweep.plot_with or [] for row in load_rows(other)
                      if row["curve"] not in {mine["curve"] for mine in rows}]
    plots.save_privacy_utility(os.path.join(sweep_dir, "privacy_utility.png"), plotted,
                               f"{base.dataset}: privacy-utility trade-off (labels: alpha or noise scale)")
    save_reconstruction_grid(os.path.join(sweep_dir, "reconstructions.png"), run_dirs)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table (paste into the README)."""
    summary = ("worst_ssim", "label_only_ssim", "floor_ssim", "excess_ssim")
    attacks = [key[:-5] for key in rows[0] if key.endswith("_ssim") and key not in summary]
    lines = ["| run | bound (bits) | test accuracy | test dCor | " + " | ".join(f"{a} SSIM" for a in attacks)
             + " | worst SSIM | excess over the floor | bytes sent (int8) | client FLOPs |",
             "|---|---|---|---|" + "---|" * len(attacks) + "---|---|---|---|"]
    for row in rows:
        excess = "-" if row.get("excess_ssim") is None else f"{row['excess_ssim']:+.3f}"
        size = "-" if row.get("activation_bytes_int8") is None else f"{row['activation_bytes_int8']:,}"
        share = "-" if row.get("client_flops_share") is None else f"{100 * row['client_flops_share']:.0f}%"
        bits = "-" if row.get("bound_bits") is None else bound.bits_text(row["bound_bits"])
        lines.append(f"| {row['run']} | {bits} | {row['test_accuracy']:.3f} | {row['test_dcor']:.3f} | "
                     + " | ".join(f"{row.get(a + '_ssim', float('nan')):.3f}" for a in attacks)
                     + f" | {row['worst_ssim']:.3f} ({row['worst_attack']}) | {excess} | {size} | {share} |")
    if rows[0].get("label_only_ssim") is not None:
        lines.append(f"label-only reference SSIM: {rows[0]['label_only_ssim']:.3f}")
    return "\n".join(lines)
