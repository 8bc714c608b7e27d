r"""Benchmarks the exported client variants with LiteRT: size, latency, bytes sent, accuracy.

  python -m export.benchmark --export_dir=runs/orl_faces_orl_cnn_conv2_alpha1/export

Per variant: the .tflite size; the LiteRT latency of one image on 1 thread
(median of --runs runs after --warmup runs), with LiteRT's default XNNPACK
delegate and with its builtin kernels alone; the bytes of activations the
device sends per image against the bytes of the raw image (uint8 pixels); and
the accuracy the exporter measured for LiteRT client + server SavedModel on
held-out test images. Needs only numpy and ai-edge-litert (no TensorFlow), so
it runs on the device as well. Prints a Markdown table.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

from nopeek_tf import manifest as manifest_lib
from nopeek_tf import runtime
from nopeek_tf.litert import ClientRunner

FLAGS = flags.FLAGS


def benchmark_client(path: str, client: manifest_lib.ClientModel, preprocessing: manifest_lib.Preprocessing,
                     runs: int, warmup: int) -> dict:
    """Median single-image latencies (ms) of one client variant, and its bytes per image."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (1, *preprocessing.image_size, preprocessing.channels),
                                               dtype=np.uint8)
    latency = {}
    for default_delegates in (True, False):
        runner = ClientRunner(path, client, preprocessing, num_threads=1, default_delegates=default_delegates)
        for _ in range(warmup):
            runner.send(pixels)
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.send(pixels)
            timings.append((time.perf_counter() - start) * 1000.0)
        latency[default_delegates] = statistics.median(timings)
    return {
        "variant": client.variant,
        "size_kb": client.size_bytes / 1024.0,
        "latency_ms": latency[True],
        "latency_builtin_ms": latency[False],
        "activation_bytes": client.output.bytes_per_sample,
        "raw_bytes": int(np.prod(preprocessing.image_size)) * preprocessing.channels,
        "accuracy": client.parity.get("accuracy"),
        "top1_agreement": client.parity.get("top1_agreement"),
    }


def markdown_table(rows: list[dict]) -> str:
    """The benchmark rows as a Markdown table."""
    lines = ["| variant | file size | latency / image, LiteRT default (XNNPACK) | latency / image, builtin kernels | "
             "activation bytes / image | raw image bytes | sends / raw | accuracy (LiteRT + server) | "
             "top-1 agreement with Keras |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_kb']:.1f} KiB | {r['latency_ms']:.3f} ms | "
                     f"{r['latency_builtin_ms']:.3f} ms | {r['activation_bytes']:,} | "
                     f"{r['raw_bytes']:,} | {r['activation_bytes'] / r['raw_bytes']:.2f}x | {r['accuracy']:.4f} | "
                     f"{r['top1_agreement']:.4f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    client_dir = os.path.join(FLAGS.export_dir, "client")
    try:
        manifest = manifest_lib.Manifest.load(client_dir)
    except (OSError, ValueError) as error:
        sys.exit(f"error: --export_dir {FLAGS.export_dir}: no readable client/manifest.json ({error})")
    if FLAGS.runs < 1 or FLAGS.warmup < 0:
        sys.exit("error: --runs must be at least 1 and --warmup at least 0")
    print(f"{manifest.dataset}, {manifest.arch} cut after {manifest.cut} (activations {manifest.activation_shape}), "
          f"alpha {manifest.alpha:g}; median of {FLAGS.runs} runs after {FLAGS.warmup} warm-up runs", flush=True)
    rows = []
    for variant, client in manifest.clients.items():
        rows.append(benchmark_client(os.path.join(client_dir, client.file), client, manifest.preprocessing,
                                     FLAGS.runs, FLAGS.warmup))
        print(f"  {variant}: {rows[-1]['latency_ms']:.3f} ms (XNNPACK), "
              f"{rows[-1]['latency_builtin_ms']:.3f} ms (builtin kernels)", flush=True)
    print(markdown_table(rows))


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("export_dir", None, "An export dir written by python -m export.export.", required=True)
    flags.DEFINE_integer("runs", 500, "Timed runs per variant (the median is reported).")
    flags.DEFINE_integer("warmup", 50, "Untimed runs first.")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main, needs_tensorflow=False)


if __name__ == "__main__":
    run()
