r"""The server of split training: the layers after the cut, over gRPC, for clients that keep their images.

On the server machine (it reads no images; --dataset gives it the shapes and classes):

  python -m train.split_server --port=50061 --num_clients=2 --schedule=splitfed \
      --dataset=fashion_mnist --model_dir=runs/split_server

On each client machine (python -m train.split_client --help):

  python -m train.split_client --server=SERVER_HOST:50061 --client_id=0 \
      --dataset=fashion_mnist --data_dir=MY_IMAGES --model_dir=runs/split_client0

Both take train.train's training flags and must give the same ones (the server refuses a client whose
model, cut, defence or optimizer differ, naming the flags). --layout=u_shaped keeps the last layer and
the labels on the clients. Writes to --model_dir: config.json, checkpoints/ (every epoch; a restarted
server resumes there), server.keras (its half) and metrics.json (per epoch: loss, accuracy, bytes per
client). The service: nopeek_tf/split_learning/split_training.proto; docs/split_training.md.
"""

from __future__ import annotations

import importlib
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
    protocol.define_flags(protocol.ServerSettings)
    flags.DEFINE_string("model_dir", "runs/split_server", "Output folder of the server's half.")
    flags.DEFINE_list("class_names", None, "For --dataset=folder: the class names (the server reads no images).")


def serving_server():
    """serving.server (a top-level folder in the checkout; nopeek_tf.serving installed): its TLS settings reader."""
    package = (__package__ or "").rpartition(".")[0]
    return importlib.import_module(f"{package}.serving.server" if package else "serving.server")


def main(argv, state_from_flags=None):
    """Serves until training ends. ``state_from_flags``: builds, from the parsed flags, what the server's state
    machine is made with (train.attack_server's attacking one); None: the honest server."""
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.split_learning import server
    from nopeek_tf.training.data import DatasetError

    serving = serving_server()
    ServingConfigError, read_ssl_config = serving.ConfigError, serving.read_ssl_config

    try:
        config, split_settings, server_settings = protocol.settings_from_flags(protocol.ServerSettings)
        credentials = read_ssl_config(server_settings.ssl_config_file) if server_settings.ssl_config_file else None
        extra = {"make_state": state_from_flags()} if state_from_flags else {}
        server.serve(config, split_settings, server_settings, FLAGS.model_dir, credentials,
                     log=lambda line: print(line, flush=True), class_names=FLAGS.class_names, **extra)
    except DatasetError as error:
        sys.exit(f"error: --dataset: {error}")
    except (config_lib.ConfigError, ServingConfigError) as error:
        sys.exit(f"error: {error}")
    except RuntimeError as error:
        if "Failed to bind" in str(error) or "bind" in str(error).lower():
            sys.exit(f"error: --port {FLAGS.port}: cannot listen ({error})")
        raise


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
