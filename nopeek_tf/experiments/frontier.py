"""The privacy-utility frontier over finished model dirs: a table, a plot and a reconstruction grid.

Each model dir was trained by ``train.train`` and attacked by ``train.leakage``
(``leakage.json``). A row states what a defence costs and what it protects:
test accuracy, the worst attack's SSIM, the label-only floor and the excess
over it, the bytes the device sends per image and the client's share of the
network's FLOPs, and the ``train.train`` command that reproduces the model.
``python -m train.frontier`` writes them; the README's frontier comes from it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from nopeek_tf import config as config_lib
from nopeek_tf import files
from nopeek_tf.experiments import plots, sweep
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.device import bound

TABLE_FILE = "frontier.md"
PLOT_FILE = "frontier.png"
GRID_FILE = "reconstructions.png"
COMMAND_SETTINGS = ("dataset", "data_dir", "arch", "arch_options", "model_file", "image_size", "channels",
                    "test_fraction", "epochs", "batch_size", "seed") + config_lib.DEFENCE_FIELDS


def frontier_row(model_dir: str, leakage_name: str = model_dir_lib.LEAKAGE_FILE) -> dict:
    """One row for a model dir with a leakage evaluation.

    Raises:
      nopeek_tf.model_dir.ModelDirError: no trained model or no ``leakage_name`` in ``model_dir``.
    """
    metrics = model_dir_lib.read_metrics(model_dir)
    leakage = model_dir_lib.read_leakage(model_dir, leakage_name)
    if leakage is None:
        raise model_dir_lib.ModelDirError(f"{model_dir} has no {leakage_name}: run python -m train.leakage "
                                          f"--model_dir={model_dir} first")
    attacks = {attack["attack"]: attack for attack in leakage["attacks"]}
    budget = leakage["budget"]
    return {
        "run": os.path.basename(os.path.normpath(model_dir)), "model_dir": model_dir,
        "cut": metrics["cut"], "defence": defence_flags(metrics),
        "commands": (train_command(metrics, model_dir), leakage_command(leakage, model_dir)),
        "test_accuracy": metrics["test_accuracy"], "test_dcor": leakage["test_dcor"],
        **bound_columns(metrics, leakage),
        "attacks": {name: attack["ssim"] for name, attack in attacks.items()},
        "worst_ssim": leakage["worst_ssim"], "worst_attack": leakage["worst_attack"],
        "floor_ssim": leakage.get("floor_ssim"), "excess_ssim": leakage.get("excess_ssim"),
        "activation_bytes_int8": metrics.get("activation_bytes_int8"),
        "activation_bytes_float32": metrics.get("activation_bytes_float32"),
        "client_flops_share": metrics.get("client_flops_share"),
        "budget": (f"{leakage['train_images']:,} public-client images, decoders width {budget['decoder_width']} "
                   f"up to {budget['decoder_epochs']} epochs, inversion {budget['inversion_steps']} steps"),
    }


def bound_columns(metrics: dict, leakage: dict) -> dict:
    """``bound_bits`` and ``label_bits`` of a run (runs from before the bound: its float32 wire's)."""
    if leakage.get("bound_bits") is not None:
        return {"bound_bits": leakage["bound_bits"], "label_bits": leakage["label_bits"]}
    values = metrics.get("activation_bytes_int8") or 0
    return {"bound_bits": bound.bound_bits(values) if values else None,
            "label_bits": bound.label_bits(metrics["num_classes"])}


def defence_flags(metrics: dict) -> str:
    """The defence settings of a run, as flags: those that differ from an undefended run ("" for none)."""
    undefended = dataclasses.replace(config_lib.TrainConfig(), alpha=0.0)
    schedule = ("alpha_warmup_epochs", "alpha_ramp_epochs") if not metrics.get("alpha") else ()  # nothing to warm up
    return _flags({name: metrics.get(name, getattr(undefended, name)) for name in config_lib.DEFENCE_FIELDS
                   if name != "cut" and name not in schedule}, undefended)


def train_command(metrics: dict, model_dir: str) -> str:
    """The ``train.train`` command that trains this model again (plain defence, every setting named)."""
    plain = config_lib.TrainConfig()
    values = {name: metrics.get(name, getattr(plain, name)) for name in COMMAND_SETTINGS}
    named = _flags({name: values[name] for name in ("dataset", "arch", "cut")}, None)
    rest = _flags({name: value for name, value in values.items() if name not in ("dataset", "arch", "cut")}, plain)
    return f"python -m train.train --defence=plain {named} {rest} --model_dir={model_dir}".replace("  ", " ")


def leakage_command(leakage: dict, model_dir: str) -> str:
    """The ``train.leakage`` command that ran this evaluation's budget again."""
    budget = _flags(leakage["budget"], config_lib.AttackBudget())
    images = _flags({"train_images": leakage["train_images"], "test_images": leakage["test_images"]},
                    config_lib.EvaluationConfig())
    return f"python -m train.leakage --model_dir={model_dir} {budget} {images}".rstrip()


def _flags(values: dict, defaults) -> str:
    """``--name=value`` for each value that differs from ``defaults``' (all of them if ``defaults`` is None)."""
    parts = []
    for name, value in values.items():
        if defaults is not None and value == getattr(defaults, name, None):
            continue
        parts.append(config_lib.flag_text(name, value))
    return " ".join(parts)


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table: one column per attack, then the summary and the costs."""
    attack_names = list(dict.fromkeys(name for row in rows for name in row["attacks"]))
    lines = ["| cut | defence (flags) | **bound (bits)** | test accuracy | " + " | ".join(attack_names)
             + " | worst SSIM | floor | **excess** | bytes sent (int8 / float32) | client's FLOPs |",
             "|---|---|---|---|" + "---|" * len(attack_names) + "---|---|---|---|---|"]
    for row in rows:
        excess = "-" if row["excess_ssim"] is None else f"**{round(row['excess_ssim'], 3) + 0.0:+.3f}**"
        floor = "-" if row["floor_ssim"] is None else f"{row['floor_ssim']:.3f}"
        share = "-" if row["client_flops_share"] is None else plots.share_text(row["client_flops_share"])
        sizes = "-" if row["activation_bytes_int8"] is None else (
            f"{row['activation_bytes_int8']:,} / {row['activation_bytes_float32']:,}")
        bits = "-" if row.get("bound_bits") is None else f"**{bound.bits_text(row['bound_bits'])}**"
        lines.append(f"| {row['cut']} | {row['defence'] or 'undefended'} | {bits} | {row['test_accuracy']:.3f} | "
                     + " | ".join(f"{row['attacks'][name]:.3f}" if name in row["attacks"] else "-"
                                  for name in attack_names)
                     + f" | {row['worst_ssim']:.3f} | {floor} | {excess} | {sizes} | {share} |")
    if rows and rows[0].get("label_bits") is not None:
        lines.append(f"\nBound: the most bits one request can reveal about the image, whatever the attack "
                     f"(float32 wire; docs/leakage.md, \"The bound\"); the class alone takes "
                     f"{rows[0]['label_bits']:.2f} bits.")
    return "\n".join(lines)


def write_frontier(model_dirs: Sequence[str], out_dir: str, title: str,
                   leakage_name: str = model_dir_lib.LEAKAGE_FILE) -> list[dict]:
    """Writes ``frontier.md`` (table, budgets and commands), ``frontier.png`` and ``reconstructions.png``.

    Args:
      model_dirs: finished and attacked model dirs, in the table's order.
      out_dir: where the three files go (created).
      title: the plot's title.
      leakage_name: which leakage report of each model dir (``leakage.json``: the Keras client's).

    Returns:
      The rows.
    """
    rows = [frontier_row(model_dir, leakage_name) for model_dir in model_dirs]
    os.makedirs(out_dir, exist_ok=True)
    budgets = sorted({row["budget"] for row in rows})
    commands = "\n".join(f"    {command}" for row in rows for command in row["commands"])
    text = (f"{markdown_table(rows)}\n\nAttack budget: {'; '.join(budgets)}.\n\nCommands (train, then attack), "
            f"row by row:\n\n{commands}\n")
    files.write_text(os.path.join(out_dir, TABLE_FILE), text)
    plots.save_frontier(os.path.join(out_dir, PLOT_FILE), rows, title)
    sweep.save_reconstruction_grid(os.path.join(out_dir, GRID_FILE),
                                   {f"{row['cut']} {row['defence'] or 'undefended'}": row["model_dir"]
                                    for row in rows})
    return rows
