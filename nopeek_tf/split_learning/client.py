"""A split client: its images, the half of the network before the cut, NoPeek's dCor, its optimizer.

Each step it runs its half on a batch of its own images, sends the activations (and the labels, in the
plain layout) to the split server, and gets back the gradient of the loss at the cut. It back-propagates
that gradient plus alpha times the gradient of dCor(images, activations), computed here where the images
are, and applies its own optimizer step. In the U-shaped layout it also keeps the last layer and the
labels: the server answers its middle part's outputs, the client computes the loss and returns their
gradient. ``python -m train.split_client`` runs :func:`train_and_evaluate`.

It checkpoints after every epoch; a client restarted (or cut off by a restarted server) rejoins from
its checkpoint, with the client half the server hands it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import grpc
import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import training
from nopeek_tf.config import ConfigError, TrainConfig
from nopeek_tf.core import models
from nopeek_tf.core.dcor import mean_batch_dcor
from nopeek_tf.device.bound import bits_text
from nopeek_tf.training import collapse, data, loop

from . import guard as guard_lib
from .accounting import SendLog, Traffic, traffic_report
from . import protocol
from . import split_training_pb2 as pb
from .halves import server_part

UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
STEP_TIMEOUT_SECONDS = 120.0
TURN_WAIT_SECONDS = 10.0
PROGRESS_SECONDS = 30.0  # a progress line within an epoch at most this often
RETRY_SECONDS = 2.0
FATAL_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.UNIMPLEMENTED)


class SplitClientError(RuntimeError):
    """The run cannot go on (the server refused the client, or stayed away); the text says why."""


class ConnectionLost(protocol.StatusError):
    """The server failed a call mid-epoch (restarted, or moved on without this client): rejoin."""


class SplitClient:
    """One client of a split server.

    Args:
      config: the training flags (the server must have the same).
      split_settings: layout and wire (the server must have the same).
      settings: server address, client id, shard, retries, TLS.
      model_dir: this client's model dir.
      log: gets one line per event.
    """

    def __init__(self, config: TrainConfig, split_settings: protocol.SplitSettings,
                 settings: protocol.ClientSettings, model_dir: str | None, log: Callable[[str], None] = print):
        settings.validate()
        self.settings, self.split_settings, self.log = settings, split_settings, log
        self.run = training.start_run(config, model_dir, protocol.check_split_config)
        self.config = config = self.run.config
        self.client_id = settings.id
        keras.utils.set_random_seed(config.seed)  # the server builds the same model from the same seed
        info = self.run.raw.info
        self.split = training.build_split(config, self.run.input_shape, info.num_classes)
        self.client_model = models.client_side(self.split)
        self.nopeek = self.split.full.get_layer(models.NOPEEK_NAME)
        _, self.head = server_part(self.split.server, split_settings.layout)
        self.optimizer = keras.optimizers.Adam(config.learning_rate)
        self.optimizer.build(self.client_model.trainable_variables)
        self.head_optimizer = None
        if self.head is not None:
            self.head_optimizer = keras.optimizers.Adam(config.learning_rate)
            self.head_optimizer.build(self.head.trainable_variables)
        self.shared_weights = self.split.client.weights + (self.head.weights if self.head is not None else [])
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.peer_key = protocol.read_peer_key(settings.peer_key_file) if settings.peer_key_file else None
        self.guard = guard_lib.HijackGuard(every=settings.hijack_check_every)
        self.own_last_half: tuple[int, int] | None = None  # (epoch, sender) of this client's last submission
        self.schedule = "sequential"  # the server's, from Join

        train = self.run.raw.train
        if settings.num_shards > 1:
            train = train.shard(settings.num_shards, settings.shard)
        self.examples = len(range(settings.shard, info.num_train, settings.num_shards))
        self._train_raw = train
        self._make_streams()
        self.steps = math.ceil(self.examples / config.batch_size)
        self.schedules = training.step_schedules(config)
        self.next_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="next_step")
        parts = dict(model=self.client_model, optimizer=self.optimizer, next_step=self.next_step)
        if self.head is not None:
            parts.update(head=self.head, head_optimizer=self.head_optimizer)
        self.checkpoints = loop.Checkpoints(os.path.join(self.run.model_dir, model_dir_lib.CHECKPOINT_DIR),
                                            parts=parts)
        self.epochs_finished = self.checkpoints.restore()
        noise = self.split.device_noise
        self.sends = SendLog(self.checkpoints.directory, int(np.prod(self.split.activation_shape)),
                             split_settings.wire, noise.stddev if noise else 0.0, noise.clip if noise else None)
        self.history: list[dict] = []
        self.traffic = Traffic()
        self._error: Exception | None = None
        self._rejoins = 0  # in a row, since the last finished epoch
        self._train_step = tf.function(self._step)
        self.channel = protocol.open_channel(settings)
        self.stub = protocol.Stub(self.channel)

    def _make_streams(self) -> None:
        """The shuffled training stream (as train.train's) and the batch-norm refresh stream, from epoch 0."""
        self.train_data = data.make_pipeline(self._train_raw, self.config.batch_size, True, self.config.seed)
        self.refresh_data = data.make_pipeline(self._train_raw, self.config.batch_size, True, self.config.seed + 1)
        self._streams_at = 0

    def _stream_for(self, epoch: int):
        """The training batches of ``epoch``: the shuffle an uninterrupted run would have then."""
        if epoch < self._streams_at:
            self._make_streams()
        loop.skip_epochs(self.train_data, epoch - self._streams_at)
        self._streams_at = epoch + 1
        return self.train_data

    # --- Calls --------------------------------------------------------------------------------

    def _call(self, method: str, request, timeout: float = STEP_TIMEOUT_SECONDS, probe: bool = False):
        try:
            response = getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code in FATAL_CODES:
                raise SplitClientError(f"the server refused {method}: {error.details()}") from None
            raise ConnectionLost(code, f"{method}: {code.name if code else 'UNKNOWN'}: {error.details()}") from None
        self.traffic.add(method, request, response, probe)
        return response

    def join(self) -> pb.JoinResponse:
        """Joins the server, retrying ``connect_retries`` times; SplitClientError when it refuses or stays away."""
        request = pb.JoinRequest(client_id=self.client_id, examples=self.examples,
                                 next_step=int(self.next_step.numpy()),
                                 config_json=protocol.agreement_json(self.config, self.split_settings))
        for attempt in range(self.settings.connect_retries + 1):
            try:
                response = self._call("Join", request, timeout=30.0)
                self.schedule = response.schedule
                self.log(f"client {self.client_id}: joined {self.settings.server} ({response.schedule}, "
                         f"{response.num_clients} clients, {response.epochs_finished} epochs done)")
                return response
            except ConnectionLost as error:
                if error.code not in UNREACHABLE_CODES:  # the server answered: it refuses this client
                    raise SplitClientError(f"the server refused {error}") from None
                if attempt == self.settings.connect_retries:
                    raise SplitClientError(f"cannot reach the split server at {self.settings.server} ({error}); gave "
                                           f"up after {attempt + 1} attempts") from None
                time.sleep(RETRY_SECONDS)
        raise AssertionError("unreachable")

    def recover(self, error: Exception) -> None:
        """After a lost call: back to the last checkpoint, then rejoin (SplitClientError after ``connect_retries``
        rejoins in a row without a finished epoch: the server keeps failing)."""
        self._rejoins += 1
        if self._rejoins > self.settings.connect_retries:
            raise SplitClientError(f"gave up after {self._rejoins - 1} rejoins without finishing an epoch: {error}")
        self.log(f"client {self.client_id}: {error}; rejoining from the checkpoint after epoch "
                 f"{self.checkpoints.restore()}")
        self.join()

    def await_turn(self) -> pb.TurnResponse:
        """Waits for the next epoch this client trains (or the end)."""
        while True:
            try:
                turn = self._call("AwaitTurn", pb.TurnRequest(client_id=self.client_id,
                                                              wait_seconds=TURN_WAIT_SECONDS),
                                  timeout=TURN_WAIT_SECONDS + 30)
            except ConnectionLost as error:
                self.recover(error)
                continue
            if turn.go or turn.done:
                return turn

    # --- Steps --------------------------------------------------------------------------------

    def _step(self, images, labels):
        variables = self.client_model.trainable_variables
        with tf.GradientTape() as tape:
            sent = self.split.send(images, training=True)
            if self.nopeek.alpha > 0:  # without NoPeek dCor is only measured: no gradient through it
                dcor, dcor_weight = self.nopeek.batch_dcor(images, sent)
                penalty = self.nopeek.alpha * self.nopeek.alpha_scale * dcor * dcor_weight
        if self.nopeek.alpha == 0:
            dcor, dcor_weight = self.nopeek.batch_dcor(images, sent)
            penalty = tf.zeros([])
        cut_gradient, loss, correct = tf.py_function(self._exchange, [sent, labels],
                                                     [tf.float32, tf.float32, tf.float32])
        cut_gradient = tf.ensure_shape(cut_gradient, sent.shape)
        if self.nopeek.alpha > 0:
            gradients = tape.gradient([sent, penalty], variables,
                                      output_gradients=[cut_gradient, tf.ones_like(penalty)])
        else:
            gradients = tape.gradient(sent, variables, output_gradients=cut_gradient)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return {"loss": loss + penalty, "correct": correct, "count": tf.cast(tf.shape(images)[0], tf.float32),
                "dcor": dcor, "dcor_weight": dcor_weight}

    def _exchange(self, sent, labels):
        """The network half of a step (in Python, inside the compiled step): the gradient at the cut."""
        step, wire = int(self.next_step.numpy()), self.split_settings.wire
        activations = protocol.encode(sent.numpy(), wire)
        labels = labels.numpy().astype(np.int32)
        try:
            if self.head is None:
                response = self._call("Step", pb.StepRequest(client_id=self.client_id, step=step,
                                                             activations=activations, labels=labels))
                gradient, loss, correct = protocol.decode(response.gradient, "gradient", wire), response.loss, \
                    response.correct
            else:
                forward = self._call("Forward", pb.ForwardRequest(client_id=self.client_id, step=step,
                                                                  activations=activations))
                outputs = tf.constant(protocol.decode(forward.outputs, "outputs", wire))
                with tf.GradientTape() as tape:
                    tape.watch(outputs)
                    logits = self.head(outputs, training=True)
                    loss = self.cross_entropy(labels, logits)
                head_variables = self.head.trainable_variables
                gradients = tape.gradient(loss, [outputs, *head_variables])
                self.head_optimizer.apply_gradients(zip(gradients[1:], head_variables))
                backward = self._call("Backward", pb.BackwardRequest(
                    client_id=self.client_id, step=step, gradient=protocol.encode(gradients[0].numpy(), wire)))
                gradient = protocol.decode(backward.gradient, "gradient", wire)
                correct = int(np.sum(np.argmax(logits.numpy(), -1) == labels))
                loss = float(loss)
            self.next_step.assign_add(1)
            self.traffic.steps += 1
            if self.guard.due():
                self.guard.record(step, gradient, self._probe(step + 1, activations, labels))
                self.next_step.assign_add(1)
        except (ConnectionLost, SplitClientError) as error:
            self._error = error
            raise
        except guard_lib.HijackDetected as error:
            self._error = SplitClientError(f"client {self.client_id}: {error}")
            raise self._error from None
        except protocol.ProtocolError as error:  # the server answered something this client cannot use
            self._error = SplitClientError(f"the server's answer to step {step}: {error}")
            raise self._error from None
        return gradient, np.float32(loss), np.float32(correct)

    def _probe(self, step: int, activations, labels: np.ndarray) -> np.ndarray:
        """The hijack probe (:mod:`guard`): the same activations with every label changed; the server's
        gradient at the cut for them, applied nowhere on this client."""
        wire, changed = self.split_settings.wire, guard_lib.changed_labels(labels, self.run.raw.info.num_classes,
                                                                          self.guard.rng)
        if self.head is None:
            response = self._call("Step", pb.StepRequest(client_id=self.client_id, step=step,
                                                         activations=activations, labels=changed), probe=True)
            return protocol.decode(response.gradient, "gradient", wire)
        forward = self._call("Forward", pb.ForwardRequest(client_id=self.client_id, step=step,
                                                          activations=activations), probe=True)
        outputs = tf.constant(protocol.decode(forward.outputs, "outputs", wire))
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            loss = self.cross_entropy(changed, self.head(outputs, training=True))
        backward = self._call("Backward", pb.BackwardRequest(
            client_id=self.client_id, step=step, gradient=protocol.encode(tape.gradient(loss, outputs).numpy(), wire)),
            probe=True)
        return protocol.decode(backward.gradient, "gradient", wire)

    def train_step(self, images, labels) -> dict:
        """One step; ConnectionLost or SplitClientError when the server call fails (nothing is applied then)."""
        self._error = None
        try:
            return self._train_step(images, labels)
        except (tf.errors.OpError, ConnectionLost, SplitClientError):
            if self._error is not None:
                raise self._error from None
            raise

    def refresh_batch_norm(self) -> None:
        """Re-estimates the client half's batch-norm statistics on its own data (as train.train does)."""
        layers = loop.batch_norm_layers(self.split.client)
        if not layers:
            return
        with loop.refresh_momentum(layers):
            for images, _ in self.refresh_data.take(loop.BATCH_NORM_REFRESH_BATCHES):
                self.split.send(images, training=True)

    # --- Epochs -------------------------------------------------------------------------------

    def set_shared_weights(self, turn: pb.TurnResponse) -> None:
        """Loads the client half (and head) a turn hands over (:func:`guard.handed_over_weights`: with
        ``--peer_key_file`` only halves signed by the clients); SplitClientError naming a refused half.

        Only weights are loaded: the architecture, the bounded last layer, the clip and the noise are this
        client's own code and flags, so nothing handed over changes the bound on what it sends."""
        try:
            weights = guard_lib.handed_over_weights(turn, [tuple(w.shape) for w in self.shared_weights],
                                                    self.peer_key, self.schedule, self.own_last_half)
        except guard_lib.HandOverRefused as error:
            raise SplitClientError(f"client {self.client_id}: {error}") from None
        for variable, value in zip(self.shared_weights, weights or ()):
            variable.assign(value)

    def train_epoch(self, epoch: int, before: Traffic) -> dict:
        """Trains ``epoch`` on this client's shard; returns its logs (traffic counted from ``before``)."""
        started = time.time()
        self.sends.epoch_started(epoch, min([s.scale_at(epoch) for s in self.schedules
                                             if s.layer == models.DEVICE_NOISE_NAME], default=1.0))
        logs = loop.EpochLogs()
        shown = time.time()
        for index, (images, labels) in enumerate(self._stream_for(epoch)):
            for schedule in self.schedules:
                schedule.apply(self.split.full, epoch + index / self.steps)
            logs.add(self.train_step(images, labels))
            if time.time() - shown > PROGRESS_SECONDS:
                shown = time.time()
                self.log(f"client {self.client_id}: epoch {epoch + 1} step {index + 1}/{self.steps} - "
                         f"{shown - started:.0f}s - loss: {logs.as_dict()['loss']:.4f}")
        self.refresh_batch_norm()
        means = logs.as_dict()
        values = [keras.ops.convert_to_numpy(w).astype(np.float32) for w in self.shared_weights]
        self._call("EndEpoch", pb.EpochEndRequest(
            client_id=self.client_id, epoch=epoch, client_weights=protocol.encode_weights(values),
            examples=self.examples, loss=means["loss"], accuracy=means["accuracy"],
            weights_tag=guard_lib.sign_half(self.peer_key, self.client_id, epoch, self.examples, values)))
        self.own_last_half = (epoch, self.client_id)
        seconds = time.time() - started
        record = {"epoch": epoch + 1, "seconds": round(seconds, 3), "steps": self.traffic.steps - before.steps,
                  "bytes_sent": self.traffic.sent - before.sent,
                  "bytes_received": self.traffic.received - before.received,
                  "step_bytes": self.traffic.step_bytes - before.step_bytes,
                  "probe_bytes": self.traffic.probe_bytes - before.probe_bytes,
                  **{f"train_{key}": value for key, value in means.items()}}
        self.history.append(record)
        self.checkpoints.save(epoch + 1)
        self._rejoins = 0
        self.log(f"client {self.client_id}: epoch {epoch + 1}/{self.config.epochs} - {seconds:.0f}s - "
                 + " - ".join(f"{key}: {value:.4f}" for key, value in sorted(means.items())))
        return record

    def train(self) -> pb.TurnResponse:
        """Joins and trains every epoch the schedule gives this client; returns the server's final answer."""
        self.join()
        while True:
            before = dataclasses.replace(self.traffic)  # the epoch's traffic includes the weights handed over
            turn = self.await_turn()
            self.set_shared_weights(turn)
            if turn.done:
                return turn
            try:
                self.train_epoch(turn.epoch, before)
            except ConnectionLost as error:
                self.recover(error)

    # --- Evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Test accuracy and loss through both halves over the service, and the test dCor of what is sent."""
        wire = self.split_settings.wire
        loss_sum = correct = count = 0.0
        images_all, sent_all, labels_all = [], [], []
        for images, labels in data.make_pipeline(self.run.raw.test, self.config.batch_size, False, self.config.seed):
            sent = keras.ops.convert_to_numpy(self.split.send(images, training=False))
            response = self._call("Evaluate", pb.EvaluateRequest(client_id=self.client_id,
                                                                 activations=protocol.encode(sent, wire)))
            outputs = protocol.decode(response.outputs, "outputs", wire)
            logits = self.head(outputs, training=False) if self.head is not None else outputs
            labels = labels.numpy()
            loss_sum += float(self.cross_entropy(labels, logits)) * len(labels)
            correct += float(np.sum(np.argmax(keras.ops.convert_to_numpy(logits), -1) == labels))
            count += len(labels)
            images_all.append(images.numpy())
            sent_all.append(sent)
            labels_all.append(labels)
        test_dcor, dcor_batch_size = mean_batch_dcor(np.concatenate(images_all), np.concatenate(sent_all),
                                                     self.config.dcor_batch_size)
        return {"test_accuracy": correct / count, "test_loss": loss_sum / count, "test_dcor": test_dcor,
                "dcor_batch_size": dcor_batch_size,
                **collapse.collapse_report(correct / count, np.concatenate(labels_all), self.config.reference_accuracy)}

    def finish(self) -> dict:
        """Evaluates, leaves the server, writes client.keras and metrics.json; returns the metrics."""
        evaluation = self.evaluate()
        try:
            self._call("Leave", pb.LeaveRequest(client_id=self.client_id), timeout=10.0)
        except ConnectionLost:
            pass  # the server is gone already; the run is complete
        metrics = {
            **self.config.to_json(), **self.split_settings.to_json(), **evaluation,
            "split_side": "client", "client_id": self.client_id, "shard": self.settings.shard,
            "num_shards": self.settings.num_shards, "train_examples": self.examples,
            **training.model_metrics(self.config, self.split, self.run.raw.info, self.split_settings.wire),
            "epochs_history": self.history, **self.guard.report(), **self.sends.report(),
            **traffic_report(self.history, sum(int(np.prod(w.shape)) for w in self.shared_weights),
                             sum(int(np.prod(w.shape)) for w in self.split.client.weights + self.split.server.weights))}
        model_dir_lib.save_model(self.run.model_dir, self.client_model, metrics,
                                 model_file=model_dir_lib.CLIENT_MODEL_FILE)
        self.log(f"client {self.client_id}: test accuracy {metrics['test_accuracy']:.4f} (both halves, over the "
                 f"service), test dCor {metrics['test_dcor']:.4f}; wrote {self.run.model_dir}")
        self.log(f"client {self.client_id}: each training image was sent {metrics['training_sends_per_image']} "
                 f"times: at most {bits_text(metrics['training_bits_per_image'])} bits about it reached the server"
                 + ("" if self.split.device_noise else " (no device noise: only the wire limits it)"))
        training.warn_if_collapsed(metrics, self.config.strict)
        return metrics


def train_and_evaluate(config: TrainConfig, split_settings: protocol.SplitSettings,
                       settings: protocol.ClientSettings, model_dir: str | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Trains this client with the split server until the schedule ends, evaluates, writes ``model_dir``.

    Raises:
      nopeek_tf.config.ConfigError: a setting cannot work.
      SplitClientError: the server refused this client or could not be reached.
    """
    client = SplitClient(config, split_settings, settings, model_dir, log)
    if client.epochs_finished:
        log(f"client {client.client_id}: resuming from the checkpoint after epoch {client.epochs_finished}")
    client.log(f"client {client.client_id}: {client.examples} training examples (shard {settings.shard} of "
               f"{settings.num_shards}), {client.steps} steps per epoch; sends activations "
               f"{client.split.activation_shape} as {split_settings.wire}"
               + (" and labels" if split_settings.layout == "plain" else "; keeps the labels (U-shaped)"))
    try:
        client.train()
        return client.finish()
    except protocol.ProtocolError as error:  # an answer of the server this client cannot use
        raise SplitClientError(f"the server's answer: {error}") from None
    except collapse.TrainingCollapsed as error:
        raise SplitClientError(str(error)) from None


__all__ = ["SplitClient", "SplitClientError", "train_and_evaluate", "ConfigError"]
