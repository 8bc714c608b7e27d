r"""Attacks a trained model dir's client and writes what it leaks.

  python -m train.leakage --model_dir=runs/quickstart           # the full budget (the whole training split)
  python -m train.leakage --model_dir=runs/quickstart --quick   # the quick budget, for comparisons
  python -m train.leakage --model_dir=runs/quickstart \
      --tflite=runs/quickstart/export/client/client_int8.tflite   # what an int8 device really sends

Runs nopeek_tf.attacks.run_attacks on the client half (the Keras client, or
with --tflite the exported client as a device runs it, int8 included), scored
on held-out test images, and writes leakage.json, leakage.csv,
reconstructions.png and reconstructions.npz to the model dir (see
nopeek_tf.experiments.evaluation; an exported client's files are named after its variant,
leakage_int8.json, ...). The exporter copies the Keras client's worst case into
the manifest (its privacy card). The budget flags are the fields of
nopeek_tf.config.AttackBudget and EvaluationConfig.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("model_dir", None, "A model dir written by python -m train.train.", required=True)
    flags.DEFINE_string("tflite", None, "Attack this exported client .tflite instead of the Keras client.")
    flags.DEFINE_bool("quick", False, "The quick budget (nopeek_tf.config.QUICK_BUDGET and QUICK_EVALUATION: 5,000 "
                      "training images, small decoders) for comparing defences; the given flags still apply.")
    config_lib.define_flags(config_lib.AttackBudget)
    config_lib.define_flags(config_lib.EvaluationConfig)


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.experiments import evaluation
    from nopeek_tf.training.data import DatasetError

    if FLAGS.tflite:
        from nopeek_tf.device import manifest as manifest_lib

        if not os.path.isfile(FLAGS.tflite):
            sys.exit(f"error: --tflite {FLAGS.tflite}: no such file")
        try:
            manifest_lib.Manifest.load(os.path.dirname(os.path.abspath(FLAGS.tflite))).client_for_file(FLAGS.tflite)
        except (OSError, ValueError) as error:
            sys.exit(f"error: --tflite {FLAGS.tflite}: {error}")
    try:
        budget = config_lib.from_flags(config_lib.AttackBudget,
                                       base=config_lib.QUICK_BUDGET if FLAGS.quick else None)
        settings = config_lib.from_flags(config_lib.EvaluationConfig,
                                         base=config_lib.QUICK_EVALUATION if FLAGS.quick else None)
        budget.validate()
        settings.validate()
        result = evaluation.evaluate_leakage(FLAGS.model_dir, FLAGS.tflite, budget, settings,
                                             progress=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, DatasetError, model_dir_lib.ModelDirError) as error:
        sys.exit(f"error: {error}")
    print("\n".join(evaluation.result_lines(result)))
    print(f"wrote {model_dir_lib.leakage_file(FLAGS.model_dir, result['client'])}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
