"""A recommendation for your model: which cut and which defence, searched, attacked and trained.

``python -m train.recommend`` runs :func:`recommend`. It takes ``train.train``'s flags (your model, your data)
and three limits: the share of the model's FLOPs the device may run (``--max_device_flops``), the accuracy the
defence may cost (``--max_accuracy_drop``, against an undefended run it trains first) and the time
(``--budget_minutes``). Then:

1. **The undefended run**: the model at the deepest allowed cut without any defence, for
   ``--trial_epochs``: the accuracy every candidate is held to.
2. **The search** (Optuna, multi-objective: accuracy up, the bound in bits down, the quick attacks' excess
   over the label-only floor down): the allowed cuts, a bottleneck width, the device's noise (a bound in
   bits), NoPeek's weight and attacker-aware training. Each candidate trains ``--trial_epochs`` (after its
   first epoch a candidate at chance, or far below the undefended run's first epoch, is pruned) and is
   attacked at :data:`SEARCH_BUDGET`. The study lives in ``<model_dir>/recommend/search.db``: a killed search
   resumes where it stopped (a candidate cut off in the middle is marked failed and not counted).
3. **The choice**: the lowest bound in bits among the candidates within ``--max_accuracy_drop`` of the
   reference accuracy: the undefended run's, or the best candidate's if higher (short runs vary); ties: the
   lower excess, then fewer bytes sent. If none is, the most accurate, said so.
4. **The model**: the choice trained for ``--epochs`` into ``--model_dir``, ready for ``train.leakage`` (at its
   full budget: the search's attacks are quick ones) and ``export.export``; and the one ``train.train``
   command that reproduces it.

Writes, besides the model dir, ``recommend/``: ``frontier.md`` and ``frontier.csv`` (every finished
candidate; the Pareto-optimal marked), ``frontier.png``, ``choice.json``, and each candidate's model dir
in ``trials/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from typing import Callable

from nopeek_tf import files
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import training
from nopeek_tf.config import (AttackBudget, ConfigError, EvaluationConfig, RecommendSettings, TrainConfig,
                              changed_settings)
from nopeek_tf.device import bound
from nopeek_tf.experiments import evaluation, frontier, plots

SEARCH_DIR = "recommend"
# The search's attacks: the same five as train.leakage, on fewer images and smaller decoders.
SEARCH_BUDGET = AttackBudget(decoder_width=16, decoder_epochs=5, inversion_steps=100, inversion_images=16)
SEARCH_EVALUATION = EvaluationConfig(train_images=2000, test_images=500)
BOTTLENECKS = (0, 2, 4, 8, 16, 32)
NOISES = (0.0, 0.1, 0.26, 0.5, 1.0)  # the device's noise std on values in [-1, 1] (with a bottleneck)
ALPHAS = (0.0, 0.1, 0.3, 1.0, 3.0)
ADVERSARY_WEIGHTS = (0.0, 1.0)
PRUNE_POINTS = 0.15  # after one epoch, a candidate this far below the undefended run's first epoch is pruned
CSV_COLUMNS = ("trial", "pareto", "cut", "defence", "test_accuracy", "bound_bits", "excess_ssim", "worst_ssim",
               "floor_ssim", "activation_bytes_int8", "client_flops_share", "model_dir")


def allowed_cuts(cuts: list, max_share: float) -> list:
    """The cuts whose client runs at most ``max_share`` of the FLOPs (ConfigError naming the flag if none)."""
    allowed = [cut for cut in cuts if cut.client_flops_share <= max_share + 1e-9]
    if not allowed:
        smallest = min(cuts, key=lambda cut: cut.client_flops_share)
        raise ConfigError(f"--max_device_flops={max_share:g}: no valid cut is that small (the smallest, "
                          f"{smallest.name}, runs {plots.share_text(smallest.client_flops_share)} of the FLOPs)")
    return allowed


def candidate_config(base: TrainConfig, cut: str, bottleneck: int, noise: float, alpha: float,
                     adversary_weight: float, epochs: int) -> TrainConfig:
    """The training config of one candidate (noise needs a bottleneck: without one it is dropped)."""
    noise = noise if bottleneck else 0.0
    return base.replace(defence="plain", cut=cut, bottleneck=bottleneck, bounded=noise > 0, device_noise=noise,
                        alpha=alpha, alpha_warmup_epochs=None, alpha_ramp_epochs=None,
                        adversary_weight=adversary_weight, epochs=epochs, strict=False, verbose=0)


def trial_config(base: TrainConfig, params: dict, epochs: int) -> TrainConfig:
    """The training config of a search trial's parameters (:func:`candidate_config`)."""
    return candidate_config(base, params["cut"], params["bottleneck"], params["device_noise"], params["alpha"],
                            params["adversary_weight"], epochs)


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on every objective (accuracy up, bound in bits and excess down)."""
    def key(row):
        return (row["test_accuracy"], -(row["bound_bits"] or math.inf), -(row["excess_ssim"] or 0.0))

    def dominated(row):
        mine = key(row)
        return any(all(a >= b for a, b in zip(key(other), mine)) and key(other) != mine for other in rows)
    return [row for row in rows if not dominated(row)]


def choose(rows: list[dict], reference_accuracy: float, max_drop: float) -> tuple[dict, str]:
    """The recommended row and why (module docstring, step 3)."""
    floor = reference_accuracy - max_drop
    within = [row for row in rows if row["test_accuracy"] >= floor]
    if not within:
        best = max(rows, key=lambda row: row["test_accuracy"])
        return best, (f"no candidate came within {max_drop:.3f} of the reference accuracy "
                      f"{reference_accuracy:.4f}: the most accurate ({best['test_accuracy']:.4f}); give a larger "
                      "--max_accuracy_drop, more --trial_epochs or more --budget_minutes")
    best = min(within, key=lambda row: (row["bound_bits"] or math.inf, row["excess_ssim"] or 0.0,
                                        row["activation_bytes_int8"] or 0))
    return best, (f"the lowest bound in bits ({bound.bits_text(best['bound_bits'])} per request) among the "
                  f"{len(within)} of {len(rows)} candidates within {max_drop:.3f} of the reference accuracy "
                  f"{reference_accuracy:.4f} (its own {best['test_accuracy']:.4f}, the quick attacks' excess "
                  f"{best['excess_ssim']:+.3f})")


def write_frontier(rows: list[dict], folder: str, title: str, chosen: dict | None = None) -> list[dict]:
    """``frontier.csv``, ``frontier.md`` and ``frontier.png`` of the finished candidates (the Pareto-optimal
    labelled, the choice ringed); returns the Pareto rows."""
    best = pareto(rows)
    table = [{**{key: row.get(key) for key in CSV_COLUMNS}, "pareto": row in best,
              "defence": row["defence"] or "undefended"} for row in rows]
    files.write_csv(os.path.join(folder, "frontier.csv"), table, CSV_COLUMNS)
    files.write_text(os.path.join(folder, "frontier.md"),
                     f"{frontier.markdown_table(best)}\n\nEvery candidate: frontier.csv. Attack budget: "
                     f"{rows[0]['budget']} (the search's quick one).\n")
    plots.save_frontier(os.path.join(folder, "frontier.png"), rows, title, labelled=[row["run"] for row in best],
                        chosen=chosen["run"] if chosen else None)
    return best


class Search:
    """One recommendation's search (:func:`recommend` runs it; the module docstring says what it does).

    Args:
      config: the user's training settings (model, data, epochs).
      settings: the limits.
      model_dir: where the chosen model goes; the search's files go to ``<model_dir>/recommend``.
      log: gets one line per event.
    """

    def __init__(self, config: TrainConfig, settings: RecommendSettings, model_dir: str,
                 log: Callable[[str], None] = print):
        config, raw = training.resolve_config(config, training.load_dataset)
        self.config, self.settings, self.model_dir, self.log = config, settings, model_dir, log
        self.folder = os.path.join(model_dir, SEARCH_DIR)
        self.cuts = allowed_cuts(training.valid_cuts(config, raw.info.image_shape, raw.info.num_classes),
                                 settings.max_device_flops)
        self.trial_epochs = settings.trial_epochs or max(1, config.epochs // 3)
        self.started = time.time()
        self.attack_data = None
        self.reference: dict = {}

    def seconds_left(self) -> float:
        return self.settings.budget_minutes * 60.0 - (time.time() - self.started)

    def _train(self, config: TrainConfig, folder: str) -> dict:
        """train_and_evaluate, its lines to ``<folder>.log`` rather than between the search's."""
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        with open(f"{folder}.log", "a") as log, contextlib.redirect_stdout(log):
            return training.train_and_evaluate(config, folder)

    def _train_in_steps(self, config: TrainConfig, folder: str, first_epoch_check=None) -> dict:
        """Trains one epoch, runs ``first_epoch_check(metrics)`` (it may raise to prune), then the rest."""
        metrics = self._train(config.replace(epochs=1), folder)
        if first_epoch_check is not None:
            first_epoch_check(metrics)
        return self._train(config, folder) if config.epochs > 1 else metrics

    def undefended(self) -> dict:
        """The reference: the deepest allowed cut, no defence, ``trial_epochs``."""
        cut = max(self.cuts, key=lambda candidate: candidate.client_flops_share)
        folder = os.path.join(self.folder, "undefended")
        config = candidate_config(self.config, cut.name, 0, 0.0, 0.0, 0.0, self.trial_epochs)
        first = self._train(config.replace(epochs=1), folder)
        metrics = self._train(config, folder)
        self.reference = {"test_accuracy": metrics["test_accuracy"], "first_epoch_accuracy": first["test_accuracy"],
                          "first_epoch_collapsed": bool(first.get("collapsed")),
                          "cut": cut.name, "seconds": time.time() - self.started, "model_dir": folder}
        self.log(f"recommend: the undefended run ({cut.name}, {self.trial_epochs} epochs): test accuracy "
                 f"{metrics['test_accuracy']:.4f}; candidates must reach {metrics['test_accuracy'] - self.settings.max_accuracy_drop:.4f}")
        return metrics

    def objective(self, trial) -> tuple[float, float, float]:
        import optuna

        cut = trial.suggest_categorical("cut", [candidate.name for candidate in self.cuts])
        trial.suggest_categorical("bottleneck", BOTTLENECKS)
        trial.suggest_categorical("device_noise", NOISES)
        trial.suggest_categorical("alpha", ALPHAS)
        trial.suggest_categorical("adversary_weight", ADVERSARY_WEIGHTS)
        config = trial_config(self.config, trial.params, self.trial_epochs)
        for earlier in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if trial_config(self.config, earlier.params, self.trial_epochs) == config:  # already trained: its figures
                trial.set_user_attr("model_dir", earlier.user_attrs["model_dir"])
                trial.set_user_attr("same_as", earlier.number)
                return tuple(earlier.values)
        folder = os.path.join(self.folder, "trials", f"{trial.number:03d}")
        trial.set_user_attr("model_dir", folder)

        def hopeless(metrics: dict) -> None:  # at chance where the undefended run was not, or far below it
            if (metrics.get("collapsed") and not self.reference["first_epoch_collapsed"]) or \
                    metrics["test_accuracy"] < self.reference["first_epoch_accuracy"] - PRUNE_POINTS:
                self.log(f"recommend: candidate {trial.number} pruned after one epoch (test accuracy "
                         f"{metrics['test_accuracy']:.4f}; the undefended run's first epoch: "
                         f"{self.reference['first_epoch_accuracy']:.4f})")
                raise optuna.TrialPruned()

        metrics = self._train_in_steps(config, folder, hopeless)
        result, _ = evaluation.attack_model_dir(folder, self.attack_data, budget=SEARCH_BUDGET)
        row = frontier.frontier_row(folder)
        self.log(f"recommend: candidate {trial.number}: cut {cut}, {row['defence'] or 'undefended'}: accuracy "
                 f"{metrics['test_accuracy']:.4f}, bound {bound.bits_text(row['bound_bits'])} bits, excess "
                 f"{result['excess_ssim']:+.3f}")
        return metrics["test_accuracy"], math.log2(max(row["bound_bits"], 1e-9)), result["excess_ssim"]

    def _clear_earlier_choice(self, final: TrainConfig) -> None:
        """A resumed search may choose anew: the run an earlier choice left in ``model_dir`` (its config.json,
        checkpoints, model and metrics; not the search's folder, not an export) makes way for the new one."""
        path = os.path.join(self.model_dir, model_dir_lib.CONFIG_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            if not changed_settings(json.load(f), final):
                return
        self.log(f"recommend: the choice differs from the one trained in {self.model_dir} before: training it anew")
        for name in (model_dir_lib.CONFIG_FILE, model_dir_lib.METRICS_FILE, *model_dir_lib.MODEL_FILES,
                     model_dir_lib.CHECKPOINT_DIR, model_dir_lib.LOG_DIR):
            target = os.path.join(self.model_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)

    def study(self):
        """The Optuna study in ``search.db`` (resumed if it exists; candidates cut off by a kill marked failed)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        os.makedirs(self.folder, exist_ok=True)
        study = optuna.create_study(
            study_name="recommend", storage=f"sqlite:///{os.path.join(self.folder, 'search.db')}",
            load_if_exists=True, directions=["maximize", "minimize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(seed=self.config.seed, population_size=8))
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            self.log(f"recommend: candidate {trial.number} was cut off by an earlier stop: marked failed")
        return study

    def finished_rows(self, study) -> list[dict]:
        import optuna

        rows = []
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if "same_as" in trial.user_attrs:
                continue
            row = frontier.frontier_row(trial.user_attrs["model_dir"])
            rows.append({**row, "trial": trial.number, "run": f"candidate {trial.number}"})
        return rows

    def run(self) -> dict:
        """Steps 1 to 4 of the module docstring; returns ``choice.json``'s content."""
        import optuna

        metrics = self.undefended()
        self.attack_data = evaluation.load_attack_data(
            metrics["dataset"], metrics.get("data_dir"), metrics["input_shape"][:2], SEARCH_EVALUATION.train_images,
            SEARCH_EVALUATION.test_images, metrics["input_shape"][2], metrics.get("test_fraction", 0.2))
        per_epoch = self.reference["seconds"] / (self.trial_epochs + 1)
        final_estimate = 1.5 * per_epoch * self.config.epochs
        study = self.study()
        search_seconds = self.seconds_left() - final_estimate
        done = len(self.finished_rows(study))
        self.log(f"recommend: searching {len(self.cuts)} cuts x {len(BOTTLENECKS)} bottlenecks x {len(NOISES)} noises "
                 f"x {len(ALPHAS)} alphas x {len(ADVERSARY_WEIGHTS)} for {max(search_seconds, 0) / 60:.1f} minutes "
                 f"({done} candidates finished before), then {final_estimate / 60:.1f} to train the choice")
        durations: list[float] = []

        def stop_in_time(study, trial) -> None:  # no candidate that would not finish before the choice's training
            if trial.datetime_complete and trial.datetime_start:
                durations.append((trial.datetime_complete - trial.datetime_start).total_seconds())
            if durations and self.seconds_left() - final_estimate < sum(durations) / len(durations):
                study.stop()

        if search_seconds > 0:
            study.optimize(self.objective, timeout=search_seconds, catch=(ConfigError,), callbacks=[stop_in_time],
                           show_progress_bar=True)
        rows = self.finished_rows(study)
        if not rows:
            pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
            raise ConfigError(f"--budget_minutes={self.settings.budget_minutes:g}: no candidate finished ({pruned} "
                              f"pruned after one epoch, far below the undefended run); give more minutes or fewer "
                              "--trial_epochs")
        # Short runs vary: the reference is the better of the undefended run and the best candidate.
        reference = max(self.reference["test_accuracy"], max(row["test_accuracy"] for row in rows))
        chosen, why = choose(rows, reference, self.settings.max_accuracy_drop)
        best_rows = write_frontier(rows, self.folder, f"{metrics.get('network', '')}: the search's candidates "
                                   f"(Pareto-optimal labelled)", chosen)
        self.log(f"recommend: chose candidate {chosen['trial']} ({chosen['cut']}, {chosen['defence'] or 'undefended'}): "
                 f"{why}")
        trial = study.trials[chosen["trial"]]
        final = trial_config(self.config, trial.params, self.config.epochs).replace(reference_accuracy=round(reference, 4))
        self._clear_earlier_choice(final)
        final_metrics = training.train_and_evaluate(final, self.model_dir)
        command = frontier.train_command(final_metrics, self.model_dir)
        choice = {"trial": chosen["trial"], "cut": chosen["cut"], "defence": chosen["defence"], "why": why,
                  "undefended": self.reference, "candidates": len(rows), "pareto": [row["trial"] for row in best_rows],
                  "search_test_accuracy": chosen["test_accuracy"], "search_excess_ssim": chosen["excess_ssim"],
                  "bound_bits": final_metrics["bound_bits"], "test_accuracy": final_metrics["test_accuracy"],
                  "minutes": round((time.time() - self.started) / 60, 2), "command": command,
                  "leakage_command": f"python -m train.leakage --model_dir={self.model_dir}"}
        files.write_json(os.path.join(self.folder, "choice.json"), choice)
        return choice


def recommend(config: TrainConfig, settings: RecommendSettings, model_dir: str,
              log: Callable[[str], None] = print) -> dict:
    """Searches, chooses and trains (module docstring); returns ``choice.json``'s content.

    Raises:
      nopeek_tf.config.ConfigError: a limit no cut or candidate can meet (the message names the flag).
      nopeek_tf.training.data.DatasetError: the dataset cannot be loaded.
    """
    settings.validate()
    return Search(config, settings, model_dir, log).run()


def read_choice(model_dir: str) -> dict | None:
    """``choice.json`` of a finished recommendation in ``model_dir``, or None."""
    path = os.path.join(model_dir, SEARCH_DIR, "choice.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


