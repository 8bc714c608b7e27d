"""The two halves' shared pieces of split training: which part of the server half each side runs, and the
server's layers with their optimizer and steps (both layouts)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf.config import ConfigError


def server_part(server: keras.Model, layout: str) -> tuple[keras.Model, keras.layers.Layer | None]:
    """(what the server runs, the last layer the client keeps): the whole server half in the plain layout;
    all of it but its last layer in the U-shaped one."""
    if layout == "plain":
        return server, None
    head = server.layers[-1]
    if not head.weights:
        raise ConfigError(f"--layout=u_shaped: the server half's last layer {head.name} has no weights to keep")
    return keras.Model(server.inputs, head.input, name="server_middle"), head


class ServerHalf:
    """The server's layers and optimizer, and one training step of each layout."""

    def __init__(self, model: keras.Model, learning_rate: float):
        self.model = model
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(model.trainable_variables)
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.output_shape = tuple(model.output_shape[1:])
        self._step = tf.function(self._plain_step)
        self._predict = tf.function(lambda x: self.model(x, training=False))

    def _plain_step(self, activations, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch(activations)
            logits = self.model(activations, training=True)
            loss = self.cross_entropy(labels, logits)
        gradients = tape.gradient(loss, [activations, *variables])
        self.optimizer.apply_gradients(zip(gradients[1:], variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.int32))
        return gradients[0], loss, correct

    def plain_step(self, activations: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float, int]:
        """One step on a batch: (gradient of the mean cross-entropy at the cut, the loss, right answers)."""
        gradient, loss, correct = self._step(tf.constant(activations), tf.constant(labels, tf.int32))
        return gradient.numpy(), float(loss), int(correct)

    def forward(self, activations: np.ndarray):
        """The U-shaped forward pass: (outputs, the tape that :meth:`backward` finishes)."""
        inputs = tf.constant(activations)
        tape = tf.GradientTape()
        with tape:
            tape.watch(inputs)
            outputs = self.model(inputs, training=True)
        return outputs.numpy(), (tape, inputs, outputs)

    def backward(self, pending, output_gradient: np.ndarray) -> np.ndarray:
        """Back-propagates the client's gradient of its outputs, applies the step; the gradient at the cut."""
        tape, inputs, outputs = pending
        variables = self.model.trainable_variables
        gradients = tape.gradient(outputs, [inputs, *variables], output_gradients=tf.constant(output_gradient))
        self.optimizer.apply_gradients(zip(gradients[1:], variables))
        return gradients[0].numpy()

    def predict(self, activations: np.ndarray) -> np.ndarray:
        return self._predict(tf.constant(activations)).numpy()
