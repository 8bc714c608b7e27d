"""Start-up for command-line scripts (TensorFlow without its C++ start-up noise), and the benchmarks' clock.

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
import warnings

# The module name every settings flag is defined under (nopeek_tf.config's dataclass fields).
SETTINGS_FLAGS_MODULE = "nopeek_tf.config"


@contextlib.contextmanager
def quiet_native_output():
    """Sends file descriptors 1 and 2 (C++ logs, library prints) to a temporary file.

    If the block raises, what was captured is written to stderr first, so that
    nothing needed to understand the failure is lost.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fd in saved:
            os.dup2(captured.fileno(), fd)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[2], 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)


def import_tensorflow_quietly():
    """Imports TensorFlow and initialises its devices with the C++ start-up log hidden.

    Returns:
      The ``tensorflow`` module.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("NOPEEK_TF_VERBOSE_STARTUP") == "1":
        import tensorflow as tf
        return tf
    with quiet_native_output():
        import tensorflow as tf
        tf.config.list_physical_devices()
    return tf


def run_from_invocation_directory() -> None:
    """Under ``bazel run``, makes relative paths relative to where the user typed the command."""
    directory = os.environ.get("BUILD_WORKING_DIRECTORY")
    if directory:
        os.chdir(directory)


def start_tensorflow_script(argv: list[str]) -> None:
    """The start of every TensorFlow command-line script's ``main``.

    Refuses positional arguments, runs from where the user typed the command
    (under ``bazel run`` too), keeps libraries' INFO logging out of the output
    and imports TensorFlow quietly.
    """
    from absl import app, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run_from_invocation_directory()
    logging.set_verbosity(logging.WARNING)
    import_tensorflow_quietly()


def run_absl_cli(define_flags, main, needs_tensorflow: bool = True) -> None:
    """The entry of an installed console script (``nopeek-train`` ...) and of ``python -m``: flags, then ``main``.

    Args:
      define_flags: defines the script's absl flags.
      main: the script's ``main(argv)``.
      needs_tensorflow: exit with one line naming the install that is missing
        when TensorFlow is not installed (the device install has none).
    """
    import importlib.util

    from absl import app, flags

    if needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        sys.exit(f"error: {os.path.basename(sys.argv[0])} needs TensorFlow, which this install does not have: "
                 f"pip install 'nopeek-tf[train]'")
    define_flags()
    # --help lists the main module's key flags; a console script's main module is its launcher, not this one.
    # The settings' flags (nopeek_tf.config's dataclass fields) are key flags of every script that defines them.
    flag_values = flags.FLAGS
    for module in (define_flags.__module__, SETTINGS_FLAGS_MODULE):
        for flag in flag_values.get_key_flags_for_module(module):
            flag_values.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs (the benchmarks' clock)."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
