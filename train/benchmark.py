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
   alpha = 0, at batch 64, 256 and 1024.

Each figure is a median over repeated runs in this one process, after warm-up;
each ratio compares figures of the same run.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from nopeek_tf import runtime

FLAGS = flags.FLAGS


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_dcor(n: int, x_features: int, z_features: int, repeats: int) -> dict:
    """Times dCor (value; value + gradient) against the dcor package and the Gram-product floor."""
    import dcor as dcor_reference
    import numpy as np
    import tensorflow as tf

    from nopeek_tf.dcor import distance_correlation

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
        "ours_value_s": median_seconds(lambda: value_fn(x, z).numpy(), repeats),
        "ours_value_and_gradient_s": median_seconds(lambda: [t.numpy() for t in value_and_gradient(x, z)], repeats),
        "gram_products_s": median_seconds(lambda: [t.numpy() for t in gram_products(x, z)], repeats),
        "gradient_product_s": median_seconds(lambda: gradient_product(z).numpy(), repeats),
        "dcor_package_s": median_seconds(lambda: dcor_reference.distance_correlation(x_np, z_np),
                                         max(3, repeats // 10), warmup=1),
    }
    return results


def benchmark_steps(batch_sizes, repeats: int) -> list[dict]:
    """Median train-step time of mnist_cnn with alpha = 1 and alpha = 0 at each batch size."""
    import keras
    import numpy as np

    from nopeek_tf import models

    rows = []
    for batch_size in batch_sizes:
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(batch_size, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, batch_size)
        seconds = {}
        for alpha in (0.0, 1.0):
            keras.utils.set_random_seed(0)
            split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, cut="conv2", alpha=alpha)
            split.full.compile(optimizer=keras.optimizers.Adam(1e-3),
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            seconds[alpha] = median_seconds(lambda: split.full.train_on_batch(x, y), repeats)
        rows.append({"batch_size": batch_size, "alpha0_s": seconds[0.0], "nopeek_s": seconds[1.0],
                     "ratio": seconds[1.0] / seconds[0.0]})
    return rows


def main(argv):
    del argv
    runtime.import_tensorflow_quietly()
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
    print("Training step, mnist_cnn cut conv2 (14x14x32), Adam:", flush=True)
    print("| batch | alpha = 0 | NoPeek (alpha = 1) | NoPeek / alpha = 0 |")
    print("|---|---|---|---|")
    for row in benchmark_steps(FLAGS.batch_sizes, FLAGS.step_repeats):
        print(f"| {row['batch_size']} | {row['alpha0_s'] * 1e3:.1f} ms | {row['nopeek_s'] * 1e3:.1f} ms | "
              f"{row['ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    flags.DEFINE_integer("n", 256, "Batch size of the dCor benchmark.")
    flags.DEFINE_integer("x_features", 784, "Raw input features.")
    flags.DEFINE_integer("z_features", 6272, "Activation features.")
    flags.DEFINE_integer("repeats", 50, "Timed runs of each dCor measurement.")
    flags.DEFINE_multi_integer("batch_sizes", [64, 256, 1024], "Batch sizes of the step benchmark.")
    flags.DEFINE_integer("step_repeats", 10, "Timed training steps per configuration.")
    app.run(main)
