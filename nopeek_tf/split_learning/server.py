"""The split server: the half of the network after the cut, its optimizer, and the clients' schedule.

It holds no images. Each step a client sends its activations (and labels, in the plain layout); the
server runs its half, answers the gradient at the cut and applies its own optimizer step. Between
epochs it passes the client half from one client to the next (``sequential``) or averages the
clients' halves weighted by their examples (``splitfed``). ``python -m train.split_server`` runs
:func:`serve`.

Faults: a client silent for ``client_timeout_seconds`` is left out of the epoch (its turn passes, or
the average goes on without it) and may rejoin; the server checkpoints after every epoch and a
restarted server resumes from there. A bad message (shape, dtype, NaN/Inf, unknown client, stale
step, not its turn) is answered with an error status naming it, and nothing is applied.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
import keras
import numpy as np
import tensorflow as tf

from nopeek_tf import files
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import training
from nopeek_tf.config import ConfigError, TrainConfig
from nopeek_tf.core import split as split_lib
from nopeek_tf.training import data, loop

from . import protocol
from . import split_training_pb2 as pb
from .protocol import ProtocolError

STATE_FILE = "split_state.json"  # in the checkpoint folder: finished epochs and the epochs' logs
CLIENT_WEIGHTS_FILE = "client_half.npz"  # in the checkpoint folder: the client half the server hands out
TURN_POLL_SECONDS = 0.5


class RpcError(Exception):
    """An answer with an error status: ``code`` (a grpc.StatusCode) and the text naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def settle_config(config: TrainConfig, class_names=None) -> tuple[TrainConfig, data.DatasetInfo]:
    """The server's config with defaults, defence, arch and cut resolved, and the dataset's shape, from no images."""
    config = config.with_defence().with_dataset_defaults()
    config.validate()
    check_split_config(config)
    image_size, channels = config.image_size, config.channels or None
    if config.model_file:
        image_size, channels = training.model_file_input(config)
    info = data.describe(config.dataset, config.data_dir, image_size, channels, class_names)
    config = training.resolve_user_cut(config.with_arch(info.image_shape), info.image_shape, info.num_classes)
    return config, info


def check_split_config(config: TrainConfig) -> None:
    """Refuses the training flags split training does not support (one line naming the flag)."""
    if config.strategy != "default":
        raise ConfigError("--strategy: split training runs each side on one device (--strategy=default)")
    if config.mixed_precision:
        raise ConfigError("--mixed_precision is not supported in split training")
    if config.adversary_weight:
        raise ConfigError("--adversary_weight (attacker-aware training) is not supported in split training")


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


@dataclasses.dataclass
class EpochRecord:
    """What the server saw in one epoch (summed over its clients)."""

    loss_sum: float = 0.0
    correct: int = 0
    examples: int = 0
    steps: int = 0
    bytes_received: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bytes_sent: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.time)
    clients: list = dataclasses.field(default_factory=list)


class SplitServer:
    """The service's state: the server half, the clients, the schedule, checkpoints.

    Args:
      config: the resolved training settings (:func:`settle_config`).
      info: the dataset's shape and classes.
      split_settings: layout and wire.
      num_clients: client ids 0 .. num_clients-1.
      schedule: "sequential" or "splitfed".
      client_timeout_seconds: a silent client is left out after this long.
      model_dir: checkpoints, server.keras, metrics.json.
      log: gets one line per event.
    """

    def __init__(self, config: TrainConfig, info: data.DatasetInfo, split_settings: protocol.SplitSettings,
                 num_clients: int, schedule: str, client_timeout_seconds: float, model_dir: str,
                 log: Callable[[str], None] = print):
        self.config, self.info, self.settings = config, info, split_settings
        self.num_clients, self.schedule, self.timeout = num_clients, schedule, client_timeout_seconds
        self.model_dir, self.log = model_dir, log
        self.agreement = protocol.agreement_json(config, split_settings)
        keras.utils.set_random_seed(config.seed)  # the clients build the same model from the same seed
        split = split_lib.split_for_config(config, info.image_shape, info.num_classes)
        self.split = split
        part, head = server_part(split.server, split_settings.layout)
        self.half = ServerHalf(part, config.learning_rate)
        self.activation_shape = tuple(split.activation_shape)
        self.client_weight_shapes = [tuple(w.shape) for w in split.client.weights] + (
            [tuple(w.shape) for w in head.weights] if head is not None else [])
        self.model_lock = threading.Lock()  # one step at a time on the server half
        self.condition = threading.Condition()
        self.epoch = 0
        self.client_weights: list[np.ndarray] | None = None
        self.expected_step: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.done: set[int] = set()
        self.skipped: set[int] = set()
        self.submitted: dict[int, tuple[list[np.ndarray], int]] = {}
        self.pending: dict[int, tuple[int, object, int]] = {}  # U-shaped: client -> (step, forward tape, batch)
        self.left: set[int] = set()
        self.turn_started = time.time()
        self.record = EpochRecord()
        self.history: list[dict] = []
        self.checkpoints = loop.Checkpoints(os.path.join(model_dir, model_dir_lib.CHECKPOINT_DIR),
                                            parts=dict(model=self.half.model, optimizer=self.half.optimizer))
        self.restore()

    # --- Checkpoints --------------------------------------------------------------------------

    def restore(self) -> None:
        """Resumes after the last checkpointed epoch, with the client half it had then."""
        self.epoch = self.checkpoints.restore()
        state_path = os.path.join(self.checkpoints.directory, STATE_FILE)
        if self.epoch and os.path.exists(state_path):
            with open(state_path) as f:
                state = json.load(f)
            self.history = state.get("history", [])
            weights_path = os.path.join(self.checkpoints.directory, CLIENT_WEIGHTS_FILE)
            if os.path.exists(weights_path):
                with np.load(weights_path) as saved:
                    self.client_weights = [saved[f"w{i}"] for i in range(len(saved.files))]
            self.log(f"resumed after epoch {self.epoch} from {self.checkpoints.directory}")

    def save(self) -> None:
        os.makedirs(self.checkpoints.directory, exist_ok=True)
        if self.client_weights is not None:
            with files.atomic_path(os.path.join(self.checkpoints.directory, CLIENT_WEIGHTS_FILE)) as path:
                with open(path, "wb") as f:
                    np.savez(f, **{f"w{i}": weight for i, weight in enumerate(self.client_weights)})
        self.checkpoints.save(self.epoch)
        files.write_json(os.path.join(self.checkpoints.directory, STATE_FILE),
                         {"epoch": self.epoch, "history": self.history})

    # --- Checks -------------------------------------------------------------------------------

    def _valid_id(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown client id {client_id}: this server trains "
                           f"clients 0..{self.num_clients - 1} (--num_clients={self.num_clients})")

    def _known(self, client_id: int) -> None:
        self._valid_id(client_id)
        if client_id not in self.expected_step:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"client {client_id} has not joined: call Join first")
        self.last_seen[client_id] = time.time()

    def _in_epoch(self, client_id: int) -> None:
        with self.condition:
            if self.epoch >= self.config.epochs:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "training is finished")
            if client_id in self.done or client_id in self.skipped:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"client {client_id} has no turn in epoch "
                               f"{self.epoch + 1} ({'finished it' if client_id in self.done else 'timed out'})")
            if self.schedule == "sequential" and self._holder() != client_id:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"not client {client_id}'s turn "
                               f"(client {self._holder()} trains now)")

    def _step_number(self, client_id: int, step: int) -> None:
        expected = self.expected_step[client_id]
        if step < expected:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"stale step {step}: client {client_id}'s next "
                           f"step is {expected}")
        if step > expected:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"step {step} out of order: client {client_id}'s next "
                           f"step is {expected}")

    def _activations(self, tensor) -> np.ndarray:
        try:
            return protocol.decode(tensor, "activations", self.settings.wire, self.activation_shape)
        except ProtocolError as error:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None

    def _training_activations(self, request, layout: str, other_layout: str) -> np.ndarray:
        """The checks a training call starts with (a joined client, ``layout``, its turn); its activations.
        ``other_layout``: the error text for a run in the other layout."""
        self._known(request.client_id)
        if self.settings.layout != layout:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, other_layout)
        self._in_epoch(request.client_id)
        return self._activations(request.activations)

    def _count(self, client_id: int, request, response) -> None:
        self.record.bytes_received[client_id] += request.ByteSize()
        self.record.bytes_sent[client_id] += response.ByteSize()

    # --- Methods ------------------------------------------------------------------------------

    def Join(self, request: pb.JoinRequest) -> pb.JoinResponse:
        self._valid_id(request.client_id)
        differences = protocol.disagreements(request.config_json, self.agreement)
        if differences:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"client {request.client_id} and the server "
                           f"disagree: {'; '.join(differences)}")
        with self.condition:
            self.expected_step[request.client_id] = int(request.next_step)
            self.last_seen[request.client_id] = time.time()
            self.pending.pop(request.client_id, None)
            self.left.discard(request.client_id)
            self.condition.notify_all()
        self.log(f"client {request.client_id} joined ({request.examples} training examples, next step "
                 f"{request.next_step})")
        return pb.JoinResponse(num_clients=self.num_clients, schedule=self.schedule, epochs_finished=self.epoch)

    def AwaitTurn(self, request: pb.TurnRequest) -> pb.TurnResponse:
        self._known(request.client_id)
        deadline = time.time() + max(0.0, min(request.wait_seconds, 60.0))
        with self.condition:
            while True:
                self.last_seen[request.client_id] = time.time()
                self._expire()
                if self.epoch >= self.config.epochs:
                    response = pb.TurnResponse(done=True, epoch=self.epoch)
                    if self.client_weights is not None:  # the trained client half, to evaluate with
                        response.client_weights.extend(protocol.encode_weights(self.client_weights))
                    return response
                if self._may_train(request.client_id):
                    if self.schedule == "sequential":
                        self.turn_started = time.time()
                    response = pb.TurnResponse(go=True, epoch=self.epoch)
                    if self.client_weights is not None:
                        response.client_weights.extend(protocol.encode_weights(self.client_weights))
                    if not self.record.clients:  # the epoch's clock starts with its first turn
                        self.record.started = time.time()
                    self.record.clients.append(request.client_id)
                    return response
                remaining = deadline - time.time()
                if remaining <= 0:
                    return pb.TurnResponse(go=False, epoch=self.epoch)
                self.condition.wait(min(remaining, TURN_POLL_SECONDS))

    def Step(self, request: pb.StepRequest) -> pb.StepResponse:
        activations = self._training_activations(
            request, "plain", "Step is the plain layout's; this run is U-shaped (Forward, then Backward)")
        labels = np.asarray(request.labels, np.int32)
        if len(labels) != len(activations):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{len(labels)} labels for {len(activations)} "
                           "activations")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.info.num_classes):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"labels must be 0..{self.info.num_classes - 1}, got "
                           f"{labels.min()}..{labels.max()}")
        with self.model_lock:
            self._step_number(request.client_id, request.step)
            gradient, loss, correct = self.half.plain_step(activations, labels)
            self.expected_step[request.client_id] += 1
        response = pb.StepResponse(gradient=protocol.encode(gradient, self.settings.wire), loss=loss, correct=correct)
        with self.condition:
            self.record.loss_sum += loss * len(labels)
            self.record.correct += correct
            self.record.examples += len(labels)
            self.record.steps += 1
            self._count(request.client_id, request, response)
        return response

    def Forward(self, request: pb.ForwardRequest) -> pb.ForwardResponse:
        activations = self._training_activations(
            request, "u_shaped", "Forward is the U-shaped layout's; this run is plain (Step)")
        with self.model_lock:
            self._step_number(request.client_id, request.step)
            outputs, tape = self.half.forward(activations)
            self.pending[request.client_id] = (request.step, tape, len(activations))
        response = pb.ForwardResponse(outputs=protocol.encode(outputs, self.settings.wire))
        with self.condition:
            self._count(request.client_id, request, response)
        return response

    def Backward(self, request: pb.BackwardRequest) -> pb.BackwardResponse:
        self._known(request.client_id)
        self._in_epoch(request.client_id)
        with self.model_lock:
            step, tape, batch = self.pending.get(request.client_id, (None, None, 0))
            if step != request.step:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"stale step {request.step}: client "
                               f"{request.client_id} has no forward pass of that step waiting")
            try:
                gradient = protocol.decode(request.gradient, "gradient", self.settings.wire, self.half.output_shape)
            except ProtocolError as error:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            if len(gradient) != batch:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"gradient for {len(gradient)} examples; the "
                               f"forward pass had {batch}")
            del self.pending[request.client_id]
            cut_gradient = self.half.backward(tape, gradient)
            self.expected_step[request.client_id] += 1
        response = pb.BackwardResponse(gradient=protocol.encode(cut_gradient, self.settings.wire))
        with self.condition:
            self.record.examples += batch
            self.record.steps += 1
            self._count(request.client_id, request, response)
        return response

    def Evaluate(self, request: pb.EvaluateRequest) -> pb.EvaluateResponse:
        self._known(request.client_id)
        activations = self._activations(request.activations)
        with self.model_lock:
            outputs = self.half.predict(activations)
        return pb.EvaluateResponse(outputs=protocol.encode(outputs, self.settings.wire))

    def EndEpoch(self, request: pb.EpochEndRequest) -> pb.EpochEndResponse:
        self._known(request.client_id)
        try:
            weights = protocol.decode_weights(request.client_weights, self.client_weight_shapes)
        except ProtocolError as error:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        with self.condition:
            if request.epoch != self.epoch:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"stale epoch {request.epoch + 1}: the server "
                               f"is at epoch {self.epoch + 1}")
            self._in_epoch(request.client_id)
            if self.schedule == "sequential":
                self.client_weights = weights
            self.submitted[request.client_id] = (weights, max(int(request.examples), 1))
            self.done.add(request.client_id)
            self.turn_started = time.time()
            self.log(f"epoch {self.epoch + 1}: client {request.client_id} done ({request.examples} examples, loss "
                     f"{request.loss:.4f}, accuracy {request.accuracy:.4f})")
            self._finish_epoch_if_done()
            self.condition.notify_all()
        return pb.EpochEndResponse()

    def Leave(self, request: pb.LeaveRequest) -> pb.LeaveResponse:
        self._known(request.client_id)
        with self.condition:
            self.left.add(request.client_id)
            self.condition.notify_all()
        self.log(f"client {request.client_id} left")
        return pb.LeaveResponse()

    # --- The schedule ---------------------------------------------------------------------------

    def _holder(self) -> int | None:
        """Sequential: the client whose turn it is."""
        return next((c for c in range(self.num_clients) if c not in self.done and c not in self.skipped), None)

    def _may_train(self, client_id: int) -> bool:
        if client_id in self.done:
            return False
        if self.schedule == "sequential":
            return self._holder() == client_id
        self.skipped.discard(client_id)  # splitfed: back in time to join this epoch's average
        return True

    def _expire(self) -> None:
        """Leaves out the clients silent for longer than the timeout (called under the condition)."""
        now = time.time()
        if self.schedule == "sequential":
            holder = self._holder()
            if holder is not None and now - max(self.last_seen.get(holder, 0.0), self.turn_started) > self.timeout:
                self.skipped.add(holder)
                self.turn_started = now
                self.log(f"epoch {self.epoch + 1}: client {holder} silent for {self.timeout:g} s; its turn passes")
        else:
            for client in range(self.num_clients):
                if client not in self.done and client not in self.skipped and \
                        now - max(self.last_seen.get(client, 0.0), self.record.started) > self.timeout:
                    self.skipped.add(client)
                    self.log(f"epoch {self.epoch + 1}: client {client} silent for {self.timeout:g} s; the epoch "
                             "ends without it")
        self._finish_epoch_if_done()

    def _finish_epoch_if_done(self) -> None:
        if len(self.done | self.skipped) < self.num_clients:
            return
        if not self.done:  # nobody trained: wait for a client rather than count an empty epoch
            self.skipped.clear()
            self.record.started = self.turn_started = time.time()
            return
        if self.schedule == "splitfed":
            total = sum(examples for _, examples in self.submitted.values())
            self.client_weights = [sum(weights[i] * (examples / total) for weights, examples in self.submitted.values())
                                   for i in range(len(self.client_weight_shapes))]
        record = self.record
        self.history.append({
            "epoch": self.epoch + 1, "seconds": round(time.time() - record.started, 3), "steps": record.steps,
            "examples": record.examples, "clients_trained": sorted(self.done), "clients_left_out": sorted(self.skipped),
            "train_loss": record.loss_sum / record.examples if record.examples and record.loss_sum else None,
            "train_accuracy": record.correct / record.examples if record.examples and self.settings.layout == "plain"
            else None,
            "bytes_received": {str(k): v for k, v in sorted(record.bytes_received.items())},
            "bytes_sent": {str(k): v for k, v in sorted(record.bytes_sent.items())}})
        self.epoch += 1
        self.done.clear()
        self.skipped.clear()
        self.submitted.clear()
        self.record = EpochRecord()
        self.turn_started = time.time()
        self.save()
        self.log(f"epoch {self.epoch}/{self.config.epochs} finished ({self.history[-1]['seconds']:.1f} s); "
                 "checkpointed")

    # --- The end --------------------------------------------------------------------------------

    def finished(self) -> bool:
        """Training is over and every client still around has said it is done (or gone silent)."""
        with self.condition:
            if self.epoch < self.config.epochs:
                return False
            now = time.time()
            waiting = [c for c in self.expected_step if c not in self.left and now - self.last_seen[c] < self.timeout]
            return not waiting

    def write_model_dir(self) -> dict:
        """Writes server.keras and metrics.json; returns the metrics."""
        metrics = {**self.config.to_json(), **self.settings.to_json(), "split_side": "server",
                   "schedule": self.schedule, "num_clients": self.num_clients,
                   **training.model_metrics(self.config, self.split, self.info),
                   "epochs_history": self.history}
        model_dir_lib.save_model(self.model_dir, self.half.model, metrics, model_file=model_dir_lib.SERVER_MODEL_FILE)
        return metrics


class _Servicer:
    """Routes each gRPC method to the SplitServer, turning RpcError into an error status."""

    def __init__(self, state: SplitServer):
        self.state = state
        for name in protocol.METHODS:
            setattr(self, name, self._wrap(name))

    def _wrap(self, name: str):
        method = getattr(self.state, name)

        def call(request, context):
            try:
                return method(request)
            except RpcError as error:
                context.abort(error.code, str(error))
        return call


def serve(config: TrainConfig, split_settings: protocol.SplitSettings, server_settings: protocol.ServerSettings,
          model_dir: str, credentials=None, log: Callable[[str], None] = print, class_names=None,
          ready: Callable[[int], None] | None = None, interceptors=()) -> dict:
    """Runs the split server until every epoch is trained and the clients are done; writes ``model_dir``.

    Args:
      config: the training flags (as the clients give them).
      split_settings: layout and wire.
      server_settings: port, clients, schedule, timeout (its ssl_config_file is read by the caller).
      model_dir: the server's model dir.
      credentials: grpc.ServerCredentials for TLS, or None.
      log: gets one line per event.
      class_names: for a folder dataset, which the server cannot read.
      ready: called with the bound port once the server listens.
      interceptors: grpc.ServerInterceptors (a test's recorder of every message).

    Returns:
      The server's metrics.json.
    """
    config, info = settle_config(config, class_names)
    model_dir_lib.prepare(model_dir, config)
    state = SplitServer(config, info, split_settings, server_settings.num_clients, server_settings.schedule,
                        server_settings.client_timeout_seconds, model_dir, log)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * server_settings.num_clients + 4),
                         options=protocol.CHANNEL_OPTIONS, interceptors=tuple(interceptors))
    server.add_generic_rpc_handlers((protocol.generic_handler(_Servicer(state)),))
    address = f"[::]:{server_settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    log(f"split server on port {port}{' (TLS)' if credentials else ''}: {server_settings.num_clients} client(s), "
        f"{server_settings.schedule}, {split_settings.layout} layout, {split_settings.wire} wire; "
        f"{config.arch} cut after {config.cut} -> activations {state.activation_shape}; epoch "
        f"{state.epoch}/{config.epochs} done")
    if ready is not None:
        ready(port)
    try:
        while not state.finished():
            time.sleep(0.2)
            with state.condition:
                state._expire()
    finally:
        server.stop(grace=2.0)
    metrics = state.write_model_dir()
    log(f"training finished: {config.epochs} epochs; wrote {model_dir}")
    return metrics
