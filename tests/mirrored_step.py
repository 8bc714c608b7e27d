"""One NoPeek training step, single-device and MirroredStrategy on N logical CPUs (run as a script).

tests/distribute_test.py runs it in a fresh process per replica count: collective
ops of MirroredStrategy instances with different device counts cannot share one
process. Writes loss, dCor metric and gradients of both steps to an .npz file.

  python tests/mirrored_step.py REPLICAS OUTPUT.npz
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ALPHA = 3.0
LEARNING_RATE = 1.0


def one_step(strategy, x, y):
    """Loss, dCor metric and gradients of one step (plain SGD: gradient = -delta weights / lr)."""
    import keras

    from nopeek_tf import models

    with strategy.scope():
        keras.utils.set_random_seed(0)
        split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=ALPHA)
        split.full.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in split.full.trainable_weights]
    logs = split.full.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    gradients = [(b - w.numpy()) / LEARNING_RATE for b, w in zip(before, split.full.trainable_weights)]
    return logs["loss"][0], logs["dcor"][0], gradients


def main(replicas: int, output: str) -> None:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    results = {}
    for name, strategy in (("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]))):
        loss, dcor_metric, gradients = one_step(strategy, x, y)
        results[f"{name}_loss"] = loss
        results[f"{name}_dcor"] = dcor_metric
        for i, gradient in enumerate(gradients):
            results[f"{name}_gradient_{i}"] = gradient
    np.savez(output, x=x, **results)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
