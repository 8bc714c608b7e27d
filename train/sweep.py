r"""The privacy-utility sweep: NoPeek over alpha against the noise baselines, every model attacked.

  python -m train.sweep --config=fashion_mnist          # a configuration module of train/configs/
  python -m train.sweep --config=fashion_mnist --epochs=1 --sweep_dir=runs/try   # flags override it
  python -m train.sweep --dataset=orl_faces --alphas=0,1 --sweep_dir=runs/sweep  # or flags alone

Each configuration module's docstring holds the command that runs it and what
it measured. The flags are the fields of nopeek_tf.experiments.sweep.SweepConfig (the axes),
nopeek_tf.config.TrainConfig (every training flag of train.train but those the
sweep sets per run: cut, alpha, noise, noise_scale), AttackBudget and
EvaluationConfig; given flags override the configuration module. The work is
nopeek_tf.experiments.sweep.run_sweep (see its docstring for what it writes).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import runtime

FLAGS = flags.FLAGS
CONFIG_PACKAGE = f"{__package__ or 'train'}.configs"  # train.configs, or nopeek_tf.train.configs installed


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    from nopeek_tf.experiments.sweep import SweepConfig

    flags.DEFINE_string("config", None, "A sweep configuration: a module name in train/configs/ (e.g. "
                        "fashion_mnist) or a path to a .py file with get_config().")
    config_lib.define_flags(SweepConfig)
    flags.DEFINE_alias("workdir", "sweep_dir")
    flags.DEFINE_bool("quick", False, "The quick attack budget (nopeek_tf.config.QUICK_BUDGET, QUICK_EVALUATION) "
                      "instead of the configuration's; the given flags still apply.")
    config_lib.define_flags(config_lib.TrainConfig, include_swept=False)
    config_lib.define_flags(config_lib.AttackBudget)
    config_lib.define_flags(config_lib.EvaluationConfig)


def load_config_module(name: str):
    """The SweepSettings of a configuration module (by name in train/configs/, or a .py path)."""
    if name.endswith(".py"):
        if not os.path.isfile(name):
            raise config_lib.ConfigError(f"--config: {name} does not exist")
        spec = importlib.util.spec_from_file_location("sweep_config", name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"{CONFIG_PACKAGE}.{name}")
        except ModuleNotFoundError:
            known = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "configs"))
                           if f.endswith(".py") and not f.startswith("_"))
            raise config_lib.ConfigError(f"--config: no sweep configuration {name!r}; choose one of "
                                         f"{', '.join(known)} or give a .py path") from None
    return module.get_config()


def settings_from_flags():
    """The SweepSettings of --config (if any) with the given flags applied over it."""
    from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings

    base = load_config_module(FLAGS.config) if FLAGS.config else SweepSettings()
    if FLAGS.quick:
        base = dataclasses.replace(base, budget=config_lib.QUICK_BUDGET, evaluation=config_lib.QUICK_EVALUATION)
    settings = SweepSettings(
        sweep=config_lib.from_flags(SweepConfig, base=base.sweep),
        train=config_lib.from_flags(config_lib.TrainConfig, base=base.train),
        budget=config_lib.from_flags(config_lib.AttackBudget, base=base.budget),
        evaluation=config_lib.from_flags(config_lib.EvaluationConfig, base=base.evaluation))
    for part in (settings.sweep, settings.train, settings.budget, settings.evaluation):
        part.validate()
    return settings


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.experiments import sweep
    from nopeek_tf.training.data import DatasetError

    try:
        settings = settings_from_flags()
        rows = sweep.run_sweep(settings, log=lambda line: print(line, flush=True))
    except config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    print(sweep.markdown_table(rows))
    print(f"wrote {settings.sweep.sweep_dir}/{sweep.RESULTS_FILE}, results.csv, privacy_utility.png, "
          "reconstructions.png")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
