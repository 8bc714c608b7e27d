r"""Recommends a cut and a defence for your model, within your limits, and trains it.

  python -m train.recommend --model_file=my_model.keras --dataset=folder --data_dir=photos/ \
      --max_device_flops=0.5 --max_accuracy_drop=0.02 --budget_minutes=30 --model_dir=runs/mine

Takes train.train's flags (your model or --arch, your data, --epochs, --image_size, ...). Trains an undefended
run first, searches the cuts the device may run and the defences (bottleneck, the device's noise and its bound
in bits, NoPeek's weight, attacker-aware training: each candidate trained briefly and attacked quickly),
prints and plots the frontier, picks the lowest bound in bits within --max_accuracy_drop of the undefended
run, trains it for --epochs into --model_dir (ready for train.leakage and export.export) and prints the
train.train command that reproduces it. A killed search resumes where it stopped. What it writes:
nopeek_tf/experiments/recommend.py; docs/your_model.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """train.train's flags, the recommendation's limits and --model_dir."""
    config_lib.define_flags(config_lib.TrainConfig)
    config_lib.define_flags(config_lib.RecommendSettings)
    flags.DEFINE_string("model_dir", None, "Where the recommended model goes (the search's files: its "
                        "recommend/ folder).", required=True)


def main(argv):
    runtime.start_tensorflow_script(argv)
    import tensorflow as tf

    from nopeek_tf.experiments import recommend

    tf.get_logger().setLevel("ERROR")  # the candidates' retracing warnings would bury the search's lines
    from nopeek_tf.training.data import DatasetError

    try:
        config = config_lib.from_flags(config_lib.TrainConfig, verbose=0).replace(defence="plain")
        settings = config_lib.from_flags(config_lib.RecommendSettings)
        choice = recommend.recommend(config, settings, FLAGS.model_dir, log=lambda line: print(line, flush=True))
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    except config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
    print(f"recommended: {choice['cut']}, {choice['defence'] or 'undefended'}: test accuracy "
          f"{choice['test_accuracy']:.4f}, at most {choice['bound_bits']:.2f} bits per request; {choice['why']}")
    print(f"frontier: {os.path.join(FLAGS.model_dir, recommend.SEARCH_DIR, 'frontier.md')} and frontier.png")
    print(f"reproduce: {choice['command']}")
    print(f"then: {choice['leakage_command']} (the full attack budget), python -m export.export "
          f"--model_dir={FLAGS.model_dir}")


def run() -> None:
    """``python -m train.recommend``."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
