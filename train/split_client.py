r"""A client of split training: its own images and the layers before the cut; only activations leave.

  python -m train.split_client --server=SERVER_HOST:50061 --client_id=0 \
      --dataset=fashion_mnist --data_dir=MY_IMAGES --model_dir=runs/split_client0

Simulated clients on one machine share an offline dataset with --shard=i --num_shards=N. The training
flags must be the server's (python -m train.split_server --help). NoPeek's dCor is computed here, on
this client's batch. TLS: --ca_file (and --client_cert/--client_key for mutual TLS). Writes to
--model_dir: config.json, checkpoints/ (every epoch; a restarted client rejoins from there),
client.keras (image -> what the device sends; python -m export.export and python -m train.leakage take
this folder) and metrics.json (test accuracy through both halves over the service, bytes per step and
per epoch, per-epoch logs).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import runtime
from nopeek_tf.split_learning import protocol

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    protocol.define_flags(protocol.ClientSettings)
    flags.DEFINE_string("model_dir", None, "Output folder of this client (default runs/split_client<id>).")


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.split_learning import client
    from nopeek_tf.training.data import DatasetError

    try:
        config, split_settings, settings = protocol.settings_from_flags(protocol.ClientSettings)
        model_dir = FLAGS.model_dir or os.path.join("runs", f"split_client{settings.id}")
        client.train_and_evaluate(config, split_settings, settings, model_dir, log=lambda line: print(line, flush=True))
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    except (config_lib.ConfigError, client.SplitClientError) as error:
        sys.exit(f"error: {error}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
