r"""Benchmarks NoPeek's cost: the dCor computation and a training step (prints; not a test).

  python -m train.benchmark

1. dCor of a batch, n = 256, raw input 784 features (28x28) against activations
   6272 features (14x14x32, the mnist_cnn cut), float32: this project's
   TensorFlow implementation (value, and value + gradient with respect to the
   activations, as in training) against the `dcor` package (value) on the same
   arrays, and against the time of the matrix products that dCor cannot avoid:
   the two Gram matrices X X^T and Z Z^T for the value, and a third n x n by
   n x 6272 product for the gradient.
2. A training step of mnist_cnn (cut conv2) with NoPeek (alpha = 1) against
   alpha = 0, at batch 64, 256 and 1024, through the training loop
   (nopeek_tf.training.loop), and the loop's step against Keras ``fit``'s on the same
   model and batch (the loop replaced ``fit``; it must not be slower).
3. With --strategies: examples/s of the loop at one global batch under each
   strategy, one device, mirrored on 2 logical CPUs and multi_worker with 2
   worker processes on loopback, at alpha 0 and 1 (each in fresh processes:
   strategies cannot share one).

Each figure is a median over repeated runs in one process, after warm-up; each
ratio compares figures of the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import runtime

FLAGS = flags.FLAGS


def benchmark_dcor(n: int, x_features: int, z_features: int, repeats: int) -> dict:
    """Times dCor (value; value + gradient) against the dcor package and the Gram-product floor."""
    import dcor as dcor_reference
    import numpy as np
    import tensorflow as tf

    from nopeek_tf.core.dcor import distance_correlation

    rng = np.random.default_rng(0)
    x_np = rng.uniform(size=(n, x_features)).astype(np.float32)
    z_np = np.maximum(x_np @ rng.normal(size=(x_features, z_features)).astype(np.float32) / 30.0, 0.0)
    x, z = tf.constant(x_np), tf.constant(z_np)

    value_fn = tf.function(distance_correlation)

    @tf.function
    def value_and_gradient(x, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = distance_correlation(x, z)
        return value, tape.gradient(value, z)

    @tf.function
    def gram_products(x, z):
        return tf.matmul(x, x, transpose_b=True), tf.matmul(z, z, transpose_b=True)

    upstream = tf.constant(rng.normal(size=(n, n)).astype(np.float32))

    @tf.function
    def gradient_product(z):
        return tf.matmul(upstream, z)

    reference_value = dcor_reference.distance_correlation(x_np, z_np)
    ours = float(value_fn(x, z))
    results = {
        "abs_error_vs_dcor": abs(ours - reference_value),
        "ours_value_s": runtime.median_seconds(lambda: value_fn(x, z).numpy(), repeats),
        "ours_value_and_gradient_s": runtime.median_seconds(lambda: [t.numpy() for t in value_and_gradient(x, z)], repeats),
        "gram_products_s": runtime.median_seconds(lambda: [t.numpy() for t in gram_products(x, z)], repeats),
        "gradient_product_s": runtime.median_seconds(lambda: gradient_product(z).numpy(), repeats),
        "dcor_package_s": runtime.median_seconds(lambda: dcor_reference.distance_correlation(x_np, z_np),
                                         max(3, repeats // 10), warmup=1),
    }
    return results


def _model_and_batch(batch_size: int, alpha: float, strategy=None):
    import keras
    import numpy as np
    import tensorflow as tf

    from nopeek_tf.core import models

    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, cut="conv2", alpha=alpha)
    return split, tf.data.Dataset.from_tensor_slices((pixels, labels))


def loop_step_seconds(batch_size: int, alpha: float, repeats: int, strategy=None) -> float:
    """Median step time of the training loop (nopeek_tf.training.loop.Trainer) on one repeated global batch.

    The batches come from the same cached pipeline as :func:`fit_step_seconds`'s,
    split over the replicas by the strategy.
    """
    from nopeek_tf.training import data, loop

    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    split, dataset = _model_and_batch(batch_size, alpha, strategy)
    trainer = loop.Trainer(split, strategy, 1e-3)
    batches = data.make_pipeline(dataset, batch_size, True, 0, drop_remainder=True).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(batches))
    return runtime.median_seconds(lambda: trainer.train_step(iterator)["loss"].numpy(), repeats)


def fit_step_seconds(batch_size: int, alpha: float, repeats: int) -> float:
    """Median step time of Keras fit (one epoch of ``repeats`` steps per measurement, divided)."""
    import keras

    from nopeek_tf.training import data

    split, dataset = _model_and_batch(batch_size, alpha)
    split.full.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = data.make_pipeline(dataset, batch_size, True, 0).repeat()
    steps = 10
    run = lambda: split.full.fit(batches, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)  # noqa: E731
    return runtime.median_seconds(run, max(3, repeats // steps), warmup=1) / steps


def benchmark_steps(batch_sizes, repeats: int) -> list[dict]:
    """Median train-step time of mnist_cnn with alpha = 1 and alpha = 0 at each batch size, loop and fit."""
    rows = []
    for batch_size in batch_sizes:
        row = {"batch_size": batch_size}
        for alpha in (0.0, 1.0):
            row[f"loop_{alpha:g}"] = loop_step_seconds(batch_size, alpha, repeats)
            row[f"fit_{alpha:g}"] = fit_step_seconds(batch_size, alpha, repeats)
        rows.append(row)
    return rows


def _measure_in_this_process() -> dict:
    """One strategy's loop examples/s (the --measure mode, run in a fresh process per strategy)."""
    from nopeek_tf import config as config_lib
    from nopeek_tf.training import distribute

    strategy = distribute.make_strategy(config_lib.TrainConfig(
        strategy=FLAGS.measure, batch_size=FLAGS.global_batch, cpu_devices=2 if FLAGS.measure == "mirrored" else 0))
    seconds = loop_step_seconds(FLAGS.global_batch, FLAGS.alpha, FLAGS.step_repeats, strategy)
    distribute.peers_met(strategy)
    return {"strategy": FLAGS.measure, "alpha": FLAGS.alpha, "step_s": seconds,
            "examples_per_s": FLAGS.global_batch / seconds, "replicas": strategy.num_replicas_in_sync}


def benchmark_strategies(global_batch: int, repeats: int) -> list[dict]:
    """Examples/s of the loop under each strategy and alpha, each measured in fresh processes."""
    rows = []
    for strategy in ("default", "mirrored", "multi_worker"):
        for alpha in (0.0, 1.0):
            command = [sys.executable, "-m", f"{__package__ or 'train'}.benchmark", f"--measure={strategy}", f"--alpha={alpha}",
                       f"--global_batch={global_batch}", f"--step_repeats={repeats}"]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            if strategy == "multi_worker":
                from nopeek_tf.training.distribute import free_ports

                cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
                workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={
                    **env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
                    for index in range(2)]
                outputs = [worker.communicate(timeout=1800)[0] for worker in workers]
            else:
                outputs = [subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, timeout=1800).stdout]
            rows.append(json.loads(outputs[0].strip().splitlines()[-1]))
            print(f"  {strategy}, alpha {alpha:g}: {rows[-1]['examples_per_s']:.0f} examples/s", flush=True)
    return rows


def main(argv):
    runtime.start_tensorflow_script(argv)
    if FLAGS.measure:
        print(json.dumps(_measure_in_this_process()), flush=True)
        return
    if FLAGS.strategies:
        print(f"Training loop under each strategy, mnist_cnn cut conv2, global batch {FLAGS.global_batch}:", flush=True)
        rows = benchmark_strategies(FLAGS.global_batch, FLAGS.step_repeats)
        print("| strategy | processes x replicas | alpha = 0 | NoPeek (alpha = 1) | NoPeek / alpha = 0 |")
        print("|---|---|---|---|---|")
        for plain, nopeek in zip(rows[::2], rows[1::2]):
            processes = 2 if plain["strategy"] == "multi_worker" else 1
            print(f"| {plain['strategy']} | {processes} x {plain['replicas'] // processes} | "
                  f"{plain['examples_per_s']:.0f} examples/s | {nopeek['examples_per_s']:.0f} examples/s | "
                  f"{plain['examples_per_s'] / nopeek['examples_per_s']:.2f}x |", flush=True)
        return
    print(f"dCor: n={FLAGS.n}, {FLAGS.x_features} against {FLAGS.z_features} features, float32", flush=True)
    d = benchmark_dcor(FLAGS.n, FLAGS.x_features, FLAGS.z_features, FLAGS.repeats)
    floor_value = d["gram_products_s"]
    floor_gradient = d["gram_products_s"] + d["gradient_product_s"]
    print("| measurement | time | ratio |")
    print("|---|---|---|")
    print(f"| dcor package, value | {d['dcor_package_s'] * 1e3:.1f} ms | |")
    print(f"| nopeek_tf, value | {d['ours_value_s'] * 1e3:.2f} ms | "
          f"{d['dcor_package_s'] / d['ours_value_s']:.0f}x faster than dcor |")
    print(f"| nopeek_tf, value + gradient | {d['ours_value_and_gradient_s'] * 1e3:.2f} ms | "
          f"{d['dcor_package_s'] / d['ours_value_and_gradient_s']:.0f}x faster than dcor's value |")
    print(f"| floor: X X^T and Z Z^T | {floor_value * 1e3:.2f} ms | value takes "
          f"{d['ours_value_s'] / floor_value:.2f}x; value + gradient {d['ours_value_and_gradient_s'] / floor_value:.2f}x |")
    print(f"| floor with the gradient's n x n by n x {FLAGS.z_features} product | {floor_gradient * 1e3:.2f} ms | "
          f"value + gradient takes {d['ours_value_and_gradient_s'] / floor_gradient:.2f}x |")
    print(f"| absolute error against dcor | {d['abs_error_vs_dcor']:.1e} | |")
    print(flush=True)
    print("Training step, mnist_cnn cut conv2 (14x14x32), Adam, one device: the loop, and Keras fit:", flush=True)
    print("| batch | alpha = 0 | NoPeek (alpha = 1) | NoPeek / alpha = 0 | fit, alpha = 0 | fit, NoPeek | "
          "loop / fit (alpha 0, NoPeek) |")
    print("|---|---|---|---|---|---|---|")
    for row in benchmark_steps(FLAGS.batch_sizes, FLAGS.step_repeats):
        print(f"| {row['batch_size']} | {row['loop_0'] * 1e3:.1f} ms | {row['loop_1'] * 1e3:.1f} ms | "
              f"{row['loop_1'] / row['loop_0']:.2f}x | {row['fit_0'] * 1e3:.1f} ms | {row['fit_1'] * 1e3:.1f} ms | "
              f"{row['loop_0'] / row['fit_0']:.2f}x, {row['loop_1'] / row['fit_1']:.2f}x |", flush=True)


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_integer("n", 256, "Batch size of the dCor benchmark.")
    flags.DEFINE_integer("x_features", 784, "Raw input features.")
    flags.DEFINE_integer("z_features", 6272, "Activation features.")
    flags.DEFINE_integer("repeats", 50, "Timed runs of each dCor measurement.")
    flags.DEFINE_multi_integer("batch_sizes", [64, 256, 1024], "Batch sizes of the step benchmark.")
    flags.DEFINE_integer("step_repeats", 30, "Timed training steps per configuration.")
    flags.DEFINE_bool("strategies", False, "Measure the loop's examples/s under each strategy instead.")
    flags.DEFINE_integer("global_batch", 256, "Global batch of --strategies.")
    flags.DEFINE_enum("measure", None, ["default", "mirrored", "multi_worker"], "Internal: measure one strategy "
                      "in this process and print JSON (what --strategies runs).")
    flags.DEFINE_float("alpha", 1.0, "Internal: alpha of --measure.")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
