"""Start-up for command-line scripts: TensorFlow without its C++ start-up noise.

Importing TensorFlow and initialising its devices prints C++ log lines (CUDA
probing, absl) to the process's stderr, below Python's reach. Scripts call
:func:`import_tensorflow_quietly` first so that their own output, and their
one-line errors, are what the user reads. Set NOPEEK_TF_VERBOSE_STARTUP=1 to
see the start-up log.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_captured():
    """Sends file descriptor 2 to a temporary file; replays it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly():
    """Imports TensorFlow and initialises its devices with the C++ start-up log hidden.

    Returns:
      The ``tensorflow`` module.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("NOPEEK_TF_VERBOSE_STARTUP") == "1":
        import tensorflow as tf
        return tf
    with _stderr_captured():
        import tensorflow as tf
        tf.config.list_physical_devices()
    return tf
