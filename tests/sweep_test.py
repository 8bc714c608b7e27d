"""The privacy-utility sweep: its plan, and a tiny sweep end to end (results, pictures, reuse)."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from nopeek_tf import attacks
from nopeek_tf.experiments import frontier, sweep
from nopeek_tf.config import AttackBudget, ConfigError, EvaluationConfig, TrainConfig
from tests.conftest import REPO_ROOT


def test_plan_runs_the_undefended_model_once_per_cut_and_noise_where_asked():
    runs = sweep.plan([0, 1, 3], [0.5], [2], ["conv2", "conv3"], noise_cuts=["conv2"])
    assert [run.name for run in runs] == ["conv2_alpha0", "conv2_alpha1", "conv2_alpha3", "conv2_gaussian0.5",
                                          "conv2_uniform2", "conv3_alpha0", "conv3_alpha1", "conv3_alpha3"]
    base = TrainConfig(alpha_warmup_epochs=1, alpha_ramp_epochs=2)
    noisy = sweep.train_config(base, runs[3])
    assert (noisy.alpha, noisy.noise, noisy.noise_scale, noisy.alpha_warmup_epochs) == (0.0, "gaussian", 0.5, 0.0)
    assert sweep.train_config(base, runs[1]).alpha_ramp_epochs == 2
    assert sweep.train_config(base, runs[0]).alpha_warmup_epochs == 0  # nothing to warm up at alpha 0
    assert runs[1].curve(base) == "NoPeek (cut conv2, warm-up 1+2)"
    assert runs[1].curve(TrainConfig(alpha_warmup_epochs=0.5)) == "NoPeek (cut conv2, warm-up 0.5+auto)"
    # A run's defence as flags (a warm-up at alpha 0 is no defence):
    assert frontier.defence_flags({"alpha": 0.0, "alpha_warmup_epochs": 0.0, "noise": "uniform", "noise_scale": 1.0}) \
        == "--noise=uniform --noise_scale=1"
    assert frontier.defence_flags({"alpha": 1.0, "alpha_warmup_epochs": 0.4, "alpha_ramp_epochs": 0.4}) == \
        "--alpha=1 --alpha_warmup_epochs=0.4 --alpha_ramp_epochs=0.4"
    narrow = TrainConfig(client_width=0.25)
    assert (runs[1].curve(narrow), runs[3].curve(narrow)) == ("NoPeek (cut conv2, width x0.25)",
                                                               "gaussian noise (cut conv2, width x0.25)")
    assert sweep.train_config(narrow, runs[3]).client_width == 0.25
    aware = sweep.plan([0], [], [], ["conv2"], adversary_weights=[2])
    assert [run.name for run in aware] == ["conv2_alpha0", "conv2_adversary2"]
    adversary = sweep.train_config(TrainConfig(adversary_label_aware=True), aware[1], adversary_alpha=0.5)
    assert (adversary.adversary_weight, adversary.alpha, adversary.adversary_label_aware) == (2.0, 0.5, True)
    assert sweep.train_config(TrainConfig(adversary_weight=3), aware[0]).adversary_weight == 0
    assert aware[1].curve(TrainConfig(alpha=0.5, adversary_label_aware=True)) == (
        "attacker-aware (cut conv2, alpha 0.5, label-aware)")


def test_a_finished_run_is_reused_even_if_written_before_a_setting_existed(tmp_path):
    config = TrainConfig(dataset="fashion_mnist", cut="dense", alpha=0.3, epochs=2)
    older = {key: value for key, value in config.to_json().items() if key != "client_width"}
    (tmp_path / "metrics.json").write_text(json.dumps({**older, "test_accuracy": 0.9}))
    assert sweep.finished_metrics(str(tmp_path), config)["test_accuracy"] == 0.9
    assert sweep.finished_metrics(str(tmp_path), dataclasses.replace(config, client_width=0.5)) is None
    assert sweep.finished_metrics(str(tmp_path), dataclasses.replace(config, epochs=3)) is None
    assert sweep.finished_metrics(str(tmp_path), dataclasses.replace(config, cut="auto")) is not None


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, capsys):
    workdir = str(tmp_path / "sweep")
    settings = sweep.SweepSettings(
        sweep=sweep.SweepConfig(sweep_dir=workdir, alphas=(0,), gaussian_noise=(), uniform_noise=(1,)),
        train=TrainConfig(dataset="orl_faces", image_size=(28, 23), epochs=1, batch_size=32, dcor_batch_size=20,
                          alpha_warmup_epochs=0.5, verbose=0),
        budget=AttackBudget(decoder_epochs=1, decoder_width=8, inversion_steps=3, inversion_images=4),
        evaluation=EvaluationConfig(train_images=64, test_images=40, recognizer_epochs=1))
    rows = sweep.run_sweep(settings)

    assert [row["run"] for row in rows] == ["conv2_alpha0", "conv2_uniform1"]
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["runs"] == rows and results["budget"]["decoder_epochs"] == 1
    for row in rows:
        leakage = json.load(open(os.path.join(workdir, row["run"], "leakage.json")))
        assert row["worst_ssim"] == max(a["ssim"] for a in leakage["attacks"]) == leakage["worst_ssim"]
        assert {f"{a}_ssim" for a in attacks.ATTACKS} <= set(row) and "label_only_ssim" in row
        assert row["test_accuracy"] == json.load(open(os.path.join(workdir, row["run"], "metrics.json")))["test_accuracy"]
    assert json.load(open(os.path.join(workdir, "conv2_uniform1", "config.json")))["noise"] == "uniform"
    with open(os.path.join(workdir, "results.csv")) as f:
        assert [row["run"] for row in csv.DictReader(f)] == [row["run"] for row in rows]
    for picture in ("privacy_utility.png", "reconstructions.png"):
        assert os.path.getsize(os.path.join(workdir, picture)) > 10_000

    capsys.readouterr()
    again = sweep.run_sweep(dataclasses.replace(
        settings, sweep=dataclasses.replace(settings.sweep, plot_with=(workdir,))))
    assert capsys.readouterr().out.count("reusing leakage.json") == 2
    assert again == rows
    with pytest.raises(ConfigError, match="--plot_with"):
        sweep.load_rows(str(tmp_path / "never_ran"))
    assert "| conv2_uniform1 |" in sweep.markdown_table(rows)
    _check_frontier_of(workdir, rows, tmp_path)


def _check_frontier_of(workdir, rows, tmp_path):
    """train.frontier over the sweep's model dirs: the files, the rows, and commands that give the same config."""
    from absl import flags

    from nopeek_tf import config as config_lib

    run_dirs = [os.path.join(workdir, row["run"]) for row in rows]
    out_dir = tmp_path / "frontier"
    result = subprocess.run([sys.executable, "-m", "train.frontier", f"--out_dir={out_dir}", *run_dirs],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = (out_dir / "frontier.md").read_text()
    assert "| conv2 | undefended |" in table and "| conv2 | --noise=uniform --noise_scale=1 |" in table
    for row in rows:
        assert f"{row['excess_ssim']:+.3f}" in table and f"{row['worst_ssim']:.3f}" in table
    for picture in ("frontier.png", "reconstructions.png"):
        assert os.path.getsize(out_dir / picture) > 10_000
    commands = [line.split() for line in table.splitlines() if line.strip().startswith("python -m train.train")]
    assert len(commands) == len(rows)
    for command, run_dir in zip(commands, run_dirs):
        flag_values = flags.FlagValues()
        config_lib.define_flags(config_lib.TrainConfig, flag_values=flag_values)
        flag_values(["prog", *(part for part in command[3:] if not part.startswith("--model_dir"))])
        again = config_lib.from_flags(config_lib.TrainConfig, flag_values=flag_values)
        saved = json.load(open(os.path.join(run_dir, "config.json")))
        for name in (*config_lib.DEFENCE_FIELDS, "epochs", "batch_size", "image_size", "dataset"):
            assert again.to_json()[name] == saved[name], (run_dir, name)

    missing = subprocess.run([sys.executable, "-m", "train.frontier", f"--out_dir={out_dir}", str(tmp_path)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and missing.stderr.strip().startswith("error: ")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_bad_sweep_flags_end_with_one_line(tmp_path):
    process = subprocess.run([sys.executable, "-m", "train.sweep", "--alphas=0,lots", f"--workdir={tmp_path}"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert process.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: --alphas"), process.stderr
