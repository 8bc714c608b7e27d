r"""Benchmarks the exported client variants with LiteRT: size, latency, bytes sent, accuracy.

  python -m export.benchmark --export_dir=runs/orl_faces_orl_cnn_conv2_alpha1/export

Per variant: the .tflite size; the LiteRT latency of one image on 1 thread
(median of --runs runs after --warmup runs), with LiteRT's default XNNPACK
delegate and with its builtin kernels alone; the bytes of activations the
device sends per image against the bytes of the raw image (uint8 pixels); and
the accuracy the exporter measured for LiteRT client + server SavedModel on
held-out test images. Needs only numpy and ai-edge-litert (no TensorFlow), so
it runs on the device as well. Prints a Markdown table, headed by this CPU's
model and the instructions XNNPACK chooses its kernels by (int8 speed depends
on int8 dot-product instructions: AVX-512 VNNI or AVX-VNNI on x86, the dot
product extension on ARM).

With --model_dir (the model dir the export came from; needs TensorFlow), it
also times the client layer by layer: each prefix of the client (its first
k layers) converted as the exporter converts it, float32 and int8, so that
each layer's share of the latency shows (LiteRT's Python API has no per-op
profiler).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import runtime
from nopeek_tf.device.litert import ClientRunner

FLAGS = flags.FLAGS


INT8_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This CPU's model and which of the instructions XNNPACK's float and int8 kernels use it has."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return "CPU unknown (no /proc/cpuinfo)"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or fields.get("Model") or f"CPU part {fields.get('CPU part', '?')}"
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    found = [flag for flag in INT8_RELEVANT_FLAGS if flag in present]
    return f"{model}; {os.cpu_count()} cores; {', '.join(found) or 'none of ' + ', '.join(INT8_RELEVANT_FLAGS)}"


def layer_breakdown(model_dir: str, runs: int, warmup: int, log=print) -> list[dict]:
    """The latency of each prefix of the client (layers 1..k), float32 and int8, LiteRT default, 1 thread.

    Needs TensorFlow: the prefixes are cut from the trained Keras client and
    converted as the exporter converts it (int8 calibrated on random images:
    the timing does not depend on the calibration).
    """
    import numpy as np

    runtime.import_tensorflow_quietly()
    import keras

    from nopeek_tf import model_dir as model_dir_lib
    from nopeek_tf.device.litert import LiteRTModel

    from .tflite import convert_client

    split, _ = model_dir_lib.load(model_dir)
    client = split.client
    rng = np.random.default_rng(0)
    shape = client.input_shape[1:]
    representative = rng.uniform(0, 1, (32, *shape)).astype(np.float32)
    rows = []
    for layer in [layer for layer in client.layers if not isinstance(layer, keras.layers.InputLayer)]:
        prefix = keras.Model(client.inputs, layer.output)
        row = {"layer": layer.name, "kind": type(layer).__name__, "output_shape": list(layer.output.shape[1:])}
        for variant in ("float32", "int8"):
            model = LiteRTModel(convert_client(prefix, variant, representative), num_threads=1)
            inputs = (rng.integers(0, 256, (1, *shape)) if model.input_dtype == np.uint8
                      else rng.uniform(0, 1, (1, *shape))).astype(model.input_dtype)
            row[variant] = 1000.0 * runtime.median_seconds(lambda: model(inputs), runs, warmup)
        rows.append(row)
        log(f"  up to {layer.name}: float32 {row['float32']:.3f} ms, int8 {row['int8']:.3f} ms", flush=True)
    return rows


def layer_table(rows: list[dict]) -> str:
    """The layer breakdown as a Markdown table: cumulative latency and each layer's increment."""
    lines = ["| client up to layer | output | float32 (cumulative) | int8 (cumulative) | float32 this layer | "
             "int8 this layer |", "|---|---|---|---|---|---|"]
    previous = {"float32": 0.0, "int8": 0.0}
    for r in rows:
        lines.append(f"| {r['layer']} ({r['kind']}) | {'x'.join(map(str, r['output_shape']))} | "
                     f"{r['float32']:.3f} ms | {r['int8']:.3f} ms | {r['float32'] - previous['float32']:+.3f} ms | "
                     f"{r['int8'] - previous['int8']:+.3f} ms |")
        previous = r
    return "\n".join(lines)


def benchmark_client(path: str, client: manifest_lib.ClientModel, preprocessing: manifest_lib.Preprocessing,
                     runs: int, warmup: int) -> dict:
    """Median single-image latencies (ms) of one client variant, and its bytes per image."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (1, *preprocessing.image_size, preprocessing.channels),
                                               dtype=np.uint8)
    latency = {}
    for default_delegates in (True, False):
        runner = ClientRunner(path, client, preprocessing, num_threads=1, default_delegates=default_delegates)
        latency[default_delegates] = 1000.0 * runtime.median_seconds(lambda: runner.send(pixels), runs, warmup)
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
    print(f"CPU: {cpu_description()}", flush=True)
    rows = []
    for variant, client in manifest.clients.items():
        rows.append(benchmark_client(os.path.join(client_dir, client.file), client, manifest.preprocessing,
                                     FLAGS.runs, FLAGS.warmup))
        print(f"  {variant}: {rows[-1]['latency_ms']:.3f} ms (XNNPACK), "
              f"{rows[-1]['latency_builtin_ms']:.3f} ms (builtin kernels)", flush=True)
    print(markdown_table(rows))
    if FLAGS.model_dir:
        print(f"\nthe client layer by layer ({FLAGS.model_dir}; LiteRT default, 1 thread):", flush=True)
        print(layer_table(layer_breakdown(FLAGS.model_dir, FLAGS.runs, FLAGS.warmup)))


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("export_dir", None, "An export dir written by python -m export.export.", required=True)
    flags.DEFINE_integer("runs", 500, "Timed runs per variant (the median is reported).")
    flags.DEFINE_integer("warmup", 50, "Untimed runs first.")
    flags.DEFINE_string("model_dir", None, "Also time the client layer by layer from this model dir (the one the "
                        "export came from; needs TensorFlow).")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main, needs_tensorflow=False)


if __name__ == "__main__":
    run()
