"""A split server that attacks: it speaks the project's protocol to the unchanged split client.

Three attacks, each a :class:`ServerState` that changes one thing of the honest one:

* ``fsha`` (feature-space hijacking; Pasquini, Ateniese, Bernaschi, CCS 2021): a pilot encoder of the
  client's architecture and a decoder trained on public images (the dataset's test split), and a WGAN-GP
  critic between what the client sends and what the pilot makes of public images. Each step the client is
  answered with the gradient of the critic's score, which pulls its activations into the pilot's space,
  where the decoder inverts them; the server still trains its classifier on what arrives, so the client's
  logged loss and accuracy look normal. Plain layout.
* ``substitute``: at every turn the server hands over, instead of the clients' half, an encoder of the
  client's architecture it trained with a decoder on public images; the steps are answered honestly.
* ``label_inference`` (Li et al. 2021; U-shaped layout, where the labels stay on the client): the server
  keeps the gradients the client returns; :mod:`nopeek_tf.adversary.scoring` runs the norm and direction
  attacks on them.

Every training message is captured (the decoder's reconstruction of each batch, as it decodes then; the
returned gradients) into ``attack_capture.npz`` in the server's model dir, with a hash of each batch's
activations so that the scorer can tell the client's label probes (repeats) apart.
``python -m train.attack_server`` runs it; docs/threat_model.md has the measured table.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import files
from nopeek_tf import training
from nopeek_tf.attacks import build_decoder
from nopeek_tf.config import ConfigError, TrainConfig
from nopeek_tf.split_learning import protocol
from nopeek_tf.split_learning import split_training_pb2 as pb
from nopeek_tf.split_learning.halves import server_part
from nopeek_tf.split_learning.server_state import ServerState
from nopeek_tf.training import data

from .settings import AttackSettings

CAPTURE_FILE = "attack_capture.npz"
DECODER_FILE = "attack_decoder.keras"
PUBLIC_BATCH = 64


def activation_hash(tensor: pb.Tensor) -> bytes:
    """What tells a repeated batch (the client's label probe) from a new one."""
    return hashlib.sha256(tensor.data).digest()[:8]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def _critic(activation_shape) -> keras.Model:
    inputs = keras.Input(tuple(activation_shape))
    x = inputs
    if len(activation_shape) == 3:
        x = keras.layers.Conv2D(64, 3, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU(0.2)(x)
        x = keras.layers.Conv2D(128, 3, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256)(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x), name="critic")


class AttackingState(ServerState):
    """The honest state machine, with the attack's changes; captures every training message.

    Args:
      attack: the attack's settings.
      (the rest): as :class:`ServerState`.
    """

    def __init__(self, attack: AttackSettings, config: TrainConfig, info: data.DatasetInfo,
                 split_settings: protocol.SplitSettings, *args, log: Callable[[str], None] = print, **kwargs):
        if attack.attack == "fsha" and split_settings.layout != "plain":
            raise ConfigError("--attack=fsha answers Step (the plain layout); use --layout=plain")
        if attack.attack == "label_inference" and split_settings.layout != "u_shaped":
            raise ConfigError("--attack=label_inference attacks the gradients a U-shaped client returns; use "
                              "--layout=u_shaped (in the plain layout the server is sent the labels)")
        super().__init__(config, info, split_settings, *args, log=log, **kwargs)
        self.attack = attack
        self.attack_lock = threading.Lock()
        self.captured: dict[str, list] = {"client": [], "step": [], "hash": [], "labels": [], "batch": []}
        self.reconstructions: list[np.ndarray] = []
        self.gradients: list[np.ndarray] = []
        self.forwarded: dict[int, pb.Tensor] = {}  # U-shaped: each client's last Forward activations
        if attack.attack in ("fsha", "substitute"):
            self._build_pilot()

    # --- The attacker's own networks, trained on public images ------------------------------------

    def _build_pilot(self) -> None:
        raw = data.load(self.config.dataset, self.config.data_dir, self.info.image_shape[:2],
                        self.info.image_shape[2], self.config.test_fraction)
        images, _ = data.to_arrays(raw.test, limit=self.attack.public_images or None)
        self.public = images.astype(np.float32)
        keras.utils.set_random_seed(self.config.seed + 1)
        self.pilot = training.build_split(self.config, self.info.image_shape, self.info.num_classes)
        self.decoder = build_decoder(self.activation_shape, self.info.image_shape)
        self.pilot_optimizer = keras.optimizers.Adam(1e-3 if self.attack.attack == "substitute"
                                                     else self.attack.attack_learning_rate)
        self.rng = np.random.default_rng(self.config.seed)
        if self.attack.attack == "fsha":
            self.critic = _critic(self.activation_shape)
            self.critic_optimizer = keras.optimizers.Adam(self.attack.attack_learning_rate)
            self._fsha_step = tf.function(self._fsha)
        self._pilot_step = tf.function(self._autoencoder_step)
        started, loss = time.time(), float("nan")
        for step in range(self.attack.pilot_steps):
            loss = float(self._pilot_step(tf.constant(self._public_batch(PUBLIC_BATCH))))
            if (step + 1) % 200 == 0:
                self.log(f"attacker: pilot step {step + 1}/{self.attack.pilot_steps}, reconstruction MSE {loss:.4f}")
        self.log(f"attacker: pilot encoder and decoder trained on {len(self.public)} public images for "
                 f"{self.attack.pilot_steps} steps ({time.time() - started:.0f} s, MSE {loss:.4f})")

    def _public_batch(self, size: int) -> np.ndarray:
        return self.public[self.rng.integers(0, len(self.public), size)]

    def _pilot_variables(self):
        return self.pilot.client.trainable_variables + self.decoder.trainable_variables

    def _autoencoder_step(self, images):
        variables = self._pilot_variables()
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self.decoder(self.pilot.send(images, training=True), training=True)
                                            - images))
        self.pilot_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def _fsha(self, private, public_images):
        """One FSHA step: pilot and decoder on public images, the critic (WGAN-GP); the gradient for the client.
        ``public_images``: as many as the private batch."""
        pilot_variables = self._pilot_variables()
        critic_variables = self.critic.trainable_variables
        with tf.GradientTape() as pilot_tape, tf.GradientTape() as critic_tape, tf.GradientTape() as client_tape:
            client_tape.watch(private)
            public = self.pilot.send(public_images, training=True)
            reconstruction_loss = tf.reduce_mean(tf.square(self.decoder(public, training=True) - public_images))
            private_score = self.critic(private, training=True)
            client_loss = tf.reduce_mean(private_score)
            critic_loss = tf.reduce_mean(self.critic(public, training=True)) - client_loss
            mix = tf.random.uniform([tf.shape(private)[0]] + [1] * (len(private.shape) - 1))
            between = mix * private + (1.0 - mix) * tf.stop_gradient(public)
            with tf.GradientTape() as penalty_tape:
                penalty_tape.watch(between)
                between_score = self.critic(between, training=True)
            slopes = penalty_tape.gradient(between_score, between)
            norms = tf.sqrt(tf.reduce_sum(tf.square(slopes), axis=list(range(1, len(slopes.shape)))) + 1e-12)
            critic_loss += self.attack.gradient_penalty * tf.reduce_mean(tf.square(norms - 1.0))
        self.pilot_optimizer.apply_gradients(zip(pilot_tape.gradient(reconstruction_loss, pilot_variables),
                                                 pilot_variables))
        self.critic_optimizer.apply_gradients(zip(critic_tape.gradient(critic_loss, critic_variables),
                                                  critic_variables))
        return client_tape.gradient(client_loss, private)

    # --- Capture ------------------------------------------------------------------------------

    def _capture(self, request, sent: pb.Tensor, labels=(), activations: np.ndarray | None = None,
                 gradient: np.ndarray | None = None) -> None:
        """Keeps one training message: who, which step, the hash of the activations ``sent``, the labels (plain),
        the decoder's reconstruction of ``activations`` or the returned ``gradient``."""
        self.captured["client"].append(request.client_id)
        self.captured["step"].append(request.step)
        self.captured["hash"].append(np.frombuffer(activation_hash(sent), np.uint8))
        self.captured["labels"].append(np.asarray(labels, np.int32))
        if activations is not None:
            self.captured["batch"].append(len(activations))
            self.reconstructions.append(_to_uint8(self.decoder.predict_on_batch(activations)))
        if gradient is not None:
            self.captured["batch"].append(len(gradient))
            self.gradients.append(gradient.astype(np.float32))

    # --- The attacks' changes to the honest methods ---------------------------------------------

    def Step(self, request: pb.StepRequest) -> pb.StepResponse:
        response = super().Step(request)  # every check, and the server's classifier trained on what arrives
        activations = protocol.decode(request.activations, "activations", self.settings.wire)
        with self.attack_lock:
            if self.attack.attack == "fsha":
                gradient = self._fsha_step(tf.constant(activations),
                                           tf.constant(self._public_batch(len(activations)))).numpy()
                response.gradient.CopyFrom(protocol.encode(gradient, self.settings.wire))
            self._capture(request, request.activations, request.labels, activations)
        return response

    def Forward(self, request: pb.ForwardRequest) -> pb.ForwardResponse:
        response = super().Forward(request)
        with self.attack_lock:
            self.forwarded[request.client_id] = request.activations
            if self.attack.attack == "substitute":
                self._capture(request, request.activations,
                              activations=protocol.decode(request.activations, "activations", self.settings.wire))
        return response

    def Backward(self, request: pb.BackwardRequest) -> pb.BackwardResponse:
        response = super().Backward(request)
        if self.attack.attack == "label_inference":
            with self.attack_lock:
                self._capture(request, self.forwarded[request.client_id],
                              gradient=protocol.decode(request.gradient, "gradient", self.settings.wire))
        return response

    def hand_over(self, response: pb.TurnResponse) -> pb.TurnResponse:
        response = super().hand_over(response)
        if self.attack.attack != "substitute":
            return response
        weights = [keras.ops.convert_to_numpy(w).astype(np.float32) for w in self.pilot.client.weights]
        if self.client_weights is not None:  # a U-shaped client's head: the clients' own, passed on
            weights += self.client_weights[len(weights):]
        elif len(weights) < len(self.client_weight_shapes):
            _, head = server_part(self.pilot.server, self.settings.layout)
            weights += [keras.ops.convert_to_numpy(w) for w in head.weights]
        del response.client_weights[:]
        response.client_weights.extend(protocol.encode_weights(weights))
        forged = [pb.SignedHalf(sender=h.sender, epoch=h.epoch, examples=h.examples,
                                weights=protocol.encode_weights(weights), tag=h.tag) for h in response.peer_halves]
        del response.peer_halves[:]
        response.peer_halves.extend(forged)  # a real half's tag on the attacker's weights
        return response

    # --- The end --------------------------------------------------------------------------------

    def finished(self) -> bool:
        """The honest end, or every client that joined gone (left, or silent for the timeout: one that
        caught the attack and stopped): the attacker keeps what it captured."""
        if super().finished():
            return True
        with self.lock:
            now = time.time()
            return bool(self.expected_step) and all(
                client in self.left or now - self.heard_from(client, now) > self.timeout for client in self.expected_step)

    def write_model_dir(self) -> dict:
        metrics = super().write_model_dir()
        with self.attack_lock:
            arrays = {"client": np.asarray(self.captured["client"], np.int32),
                      "step": np.asarray(self.captured["step"], np.int64),
                      "hash": np.stack(self.captured["hash"]) if self.captured["hash"] else np.zeros((0, 8), np.uint8),
                      "batch": np.asarray(self.captured["batch"], np.int32),
                      "labels": np.concatenate(self.captured["labels"]) if self.captured["labels"] else
                      np.zeros(0, np.int32)}
            if self.reconstructions:
                arrays["reconstructions"] = np.concatenate(self.reconstructions)
            if self.gradients:
                arrays["gradients"] = np.concatenate([g.reshape(len(g), -1) for g in self.gradients])
        with files.atomic_path(os.path.join(self.model_dir, CAPTURE_FILE)) as path:
            with open(path, "wb") as f:
                np.savez_compressed(f, **arrays)
        files.write_json(os.path.join(self.model_dir, "attack.json"),
                         {**self.attack.to_json(), "captured_messages": len(arrays["step"]),
                          "public_images": int(len(getattr(self, "public", ())))})
        self.log(f"attacker: captured {len(arrays['step'])} training messages into "
                 f"{os.path.join(self.model_dir, CAPTURE_FILE)}")
        return metrics


def state_factory(attack: AttackSettings):
    """What :func:`nopeek_tf.split_learning.server.serve` builds its state with, for this attack."""
    def make(*args, **kwargs) -> AttackingState:
        return AttackingState(attack, *args, **kwargs)
    return make
