"""One NoPeek training step through the training loop, on one device or under a strategy (run as a script).

tests/distribute_test.py runs it in fresh processes: collective ops of strategies
with different device counts cannot share one process, and a
MultiWorkerMirroredStrategy must be made before any other TensorFlow work.
Writes the step's loss, dCor metric and gradients (plain SGD: -delta weights / lr)
and the weights after it to an .npz file.

  python tests/distributed_step.py single OUTPUT.npz
  python tests/distributed_step.py mirrored REPLICAS OUTPUT.npz
  TF_CONFIG=... python tests/distributed_step.py multi_worker OUTPUT.npz

With NOPEEK_STEP_ADVERSARY=1 the step also trains an in-loop decoder (attacker-aware
training); its weights after the step are written too. With NOPEEK_STEP_USER_MODEL=1 the
model is a user's Keras model split by nopeek_tf.split.split_model instead of mnist_cnn.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ALPHA = 3.0
LEARNING_RATE = 1.0
BATCH = 16


def batch():
    """The global batch: 16 random 28x28 uint8 images and labels (the same in every process)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, BATCH)


def one_step(strategy):
    """Loss, dCor metric, gradients and new weights (the model's, then the in-loop decoder's) of one step."""
    import keras

    from nopeek_tf.training import loop

    from nopeek_tf.core import models

    with strategy.scope():
        keras.utils.set_random_seed(0)
        if os.environ.get("NOPEEK_STEP_USER_MODEL"):
            from nopeek_tf.core.split import split_model

            user = keras.Sequential([
                keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c2"),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c3"), keras.layers.Flatten(name="f"),
                keras.layers.Dense(16, activation="relu", name="d1"), keras.layers.Dense(10, activation="softmax")])
            split = split_model(user, "c2", alpha=ALPHA)
        else:
            split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=ALPHA)
    adversary = loop.Adversary(weight=1.0, threshold=0.0, width=8) if os.environ.get("NOPEEK_STEP_ADVERSARY") else None
    trainer = loop.Trainer(split, strategy, LEARNING_RATE, optimizer=keras.optimizers.SGD, adversary=adversary)
    before = [w.numpy().copy() for w in split.full.trainable_weights]
    dataset = trainer.distribute(tf.data.Dataset.from_tensor_slices(batch()), BATCH, seed=0)
    logs = trainer.train_step(iter(dataset))
    after = [w.numpy() for w in split.full.trainable_weights]
    gradients = [(b - a) / LEARNING_RATE for b, a in zip(before, after)]
    if trainer.decoder is not None:
        after += [w.numpy() for w in trainer.decoder.trainable_weights]
    return float(logs["loss"]), float(logs["dcor"]), gradients, after


def main(kind: str, output: str, replicas: int = 1) -> None:
    if kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    else:
        strategy = tf.distribute.get_strategy()
    loss, dcor_metric, gradients, weights = one_step(strategy)
    np.savez(output, x=batch()[0], loss=loss, dcor=dcor_metric,
             **{f"gradient_{i}": g for i, g in enumerate(gradients)}, **{f"weight_{i}": w for i, w in enumerate(weights)})


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        main("mirrored", sys.argv[3], int(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2])
