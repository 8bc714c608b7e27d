r"""Exports a trained model dir: the client half to TFLite, the server half for TF Serving.

  python -m export.export --model_dir=runs/orl_faces_orl_cnn_conv2_alpha1

writes to --export_dir (default <model_dir>/export):

  client/manifest.json               the device/server contract (nopeek_tf.device.manifest)
  client/client_<variant>.tflite     float32, float16, dynamic, int8 (builtin ops only)
  serving/models.config              model_config_list for tensorflow_model_server
  serving/batching_parameters.txt    for --enable_batching
  serving/<model_name>/<version>/    the server half as a SavedModel; each export
                                     adds a version and never overwrites one

The SavedModel's signature "serving_default" takes float32 activations
(input "activations", [None, ...]) and returns "probabilities", "class_ids" and
"logits". With the int8 variant it also has "serving_int8", which takes the
int8 activations an int8 client sends (4x fewer bytes) and dequantizes them
with that client's output scale and zero point before the server half.

Before anything is moved into place the exporter checks, on held-out test
images, that LiteRT client + server SavedModel agree with the Keras model, and
records the result in the manifest.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import runtime

from .pipeline import export_model
from .staging import ExportConfig, ExportError


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script, so that tests can import this module)."""
    config_lib.define_flags(ExportConfig)


def main(argv):
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required (a folder written by python -m train.train)")
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.training.data import DatasetError

    try:
        export_model(config_lib.from_flags(ExportConfig))
    except (ExportError, config_lib.ConfigError, DatasetError, model_dir_lib.ModelDirError) as error:
        sys.exit(f"error: {error}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
