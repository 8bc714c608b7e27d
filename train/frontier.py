r"""The privacy-utility frontier of finished, attacked model dirs: a table, a plot, a reconstruction grid.

  python -m train.frontier --out_dir=docs/leakage/fashion_frontier \
      --title="Fashion-MNIST, mnist_cnn, 2 epochs" runs/frontier/conv2_alpha0 runs/frontier/dense_bottleneck8

Each folder was trained by train.train and attacked by train.leakage. Writes
frontier.md (one row per model dir: accuracy, each attack's SSIM, the worst, the
label-only floor, the excess over it, bytes sent, the client's share of the
FLOPs; the attack budget; the train.train command that reproduces each model),
frontier.png (accuracy against excess, by cut) and reconstructions.png. The work
is nopeek_tf.experiments.frontier.write_frontier.
"""

from __future__ import annotations

import sys

from absl import flags

from nopeek_tf import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("out_dir", None, "Where frontier.md, frontier.png and reconstructions.png go.", required=True)
    flags.DEFINE_string("title", "privacy-utility frontier", "The plot's title.")
    flags.DEFINE_string("leakage_file", "leakage.json", "Which leakage report of each model dir (leakage.json: the "
                        "Keras client's; leakage_int8.json: the exported int8 client's).")


def main(argv):
    from nopeek_tf.experiments import frontier
    from nopeek_tf import model_dir as model_dir_lib

    model_dirs = argv[1:]
    if not model_dirs:
        sys.exit("error: name the model dirs to compare: python -m train.frontier --out_dir=DIR RUN_DIR...")
    try:
        rows = frontier.write_frontier(model_dirs, FLAGS.out_dir, FLAGS.title, FLAGS.leakage_file)
    except model_dir_lib.ModelDirError as error:
        sys.exit(f"error: {error}")
    print(frontier.markdown_table(rows))
    print(f"wrote {FLAGS.out_dir}/{frontier.TABLE_FILE}, {frontier.PLOT_FILE}, {frontier.GRID_FILE}")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
