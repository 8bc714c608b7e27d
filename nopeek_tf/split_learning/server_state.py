"""The split server's state machine: the clients, their steps, the schedule, the epochs' averages.

Every change happens under one lock (:attr:`ServerState.lock`, a condition that ``AwaitTurn`` waits on),
the server half's steps included, so a step, an evaluation and an epoch's end from different clients never
interleave: each client's step numbers advance once per applied step, and an epoch's average is over
exactly the halves submitted in it. The gRPC servicer (:mod:`nopeek_tf.split_learning.server`) only turns
calls into these methods and :class:`StatusError` into an error status.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import threading
import time
from typing import Callable

import grpc
import keras
import numpy as np

from nopeek_tf import files
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import training
from nopeek_tf.config import TrainConfig
from nopeek_tf.training import data, loop

from . import protocol
from . import split_training_pb2 as pb
from .halves import ServerHalf, server_part
from .protocol import ProtocolError, StatusError

STATE_FILE = "split_state.json"  # in the checkpoint folder: finished epochs and the epochs' logs
CLIENT_WEIGHTS_FILE = "client_half.npz"  # in the checkpoint folder: the client half the server hands out
HANDED_HALVES_FILE = "signed_halves.pb"  # in the checkpoint folder: the signed halves behind it, as relayed
TURN_POLL_SECONDS = 0.5


@dataclasses.dataclass
class EpochRecord:
    """What the server saw in one epoch, summed over its clients: the task's loss and accuracy (the plain layout's)."""

    task: loop.EpochLogs = dataclasses.field(default_factory=loop.EpochLogs)
    examples: int = 0
    steps: int = 0
    bytes_received: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bytes_sent: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.time)
    clients: list = dataclasses.field(default_factory=list)


class ServerState:
    """The service's state: the server half, the clients, the schedule, checkpoints (one lock guards it all).

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
        split = training.build_split(config, info.image_shape, info.num_classes)
        self.split = split
        part, head = server_part(split.server, split_settings.layout)
        self.half = ServerHalf(part, config.learning_rate)
        self.activation_shape = tuple(split.activation_shape)
        self.client_weight_shapes = [tuple(w.shape) for w in split.client.weights] + (
            [tuple(w.shape) for w in head.weights] if head is not None else [])
        self.lock = threading.Condition()  # guards every attribute below and the server half's steps
        self.epoch = 0
        self.client_weights: list[np.ndarray] | None = None
        self.expected_step: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.in_call: collections.Counter = collections.Counter()  # calls of each client the server is working on
        self.done: set[int] = set()
        self.skipped: set[int] = set()
        self.submitted: dict[int, tuple[list[np.ndarray], int]] = {}
        self.submitted_halves: dict[int, pb.SignedHalf] = {}  # this epoch's, as their senders signed them
        self.handed_halves: list[pb.SignedHalf] = []  # behind client_weights: relayed, never re-signed
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
            halves_path = os.path.join(self.checkpoints.directory, HANDED_HALVES_FILE)
            if os.path.exists(halves_path):
                with open(halves_path, "rb") as f:
                    self.handed_halves = list(pb.TurnResponse.FromString(f.read()).peer_halves)
            self.log(f"resumed after epoch {self.epoch} from {self.checkpoints.directory}")

    def save(self) -> None:
        os.makedirs(self.checkpoints.directory, exist_ok=True)
        if self.client_weights is not None:
            with files.atomic_path(os.path.join(self.checkpoints.directory, CLIENT_WEIGHTS_FILE)) as path:
                with open(path, "wb") as f:
                    np.savez(f, **{f"w{i}": weight for i, weight in enumerate(self.client_weights)})
            files.write_bytes(os.path.join(self.checkpoints.directory, HANDED_HALVES_FILE),
                              pb.TurnResponse(peer_halves=self.handed_halves).SerializeToString())
        self.checkpoints.save(self.epoch)
        files.write_json(os.path.join(self.checkpoints.directory, STATE_FILE),
                         {"epoch": self.epoch, "history": self.history})

    # --- Who is silent -------------------------------------------------------------------------

    @contextlib.contextmanager
    def call_of(self, client_id: int):
        """A call of ``client_id`` in progress (the servicer wraps every call in it): a client is not silent
        while the server works on its request, however long that takes (a first trace of a new batch shape)."""
        with self.lock:
            self.in_call[client_id] += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_call[client_id] -= 1
                if client_id in self.last_seen:
                    self.last_seen[client_id] = time.time()

    def heard_from(self, client_id: int, now: float) -> float:
        """When ``client_id`` was last heard from: ``now`` during a call of its. Called under the lock."""
        return now if self.in_call[client_id] else self.last_seen.get(client_id, 0.0)

    def listening(self) -> None:
        """The service listens: the first turn's clock starts now, not when this state was built."""
        with self.lock:
            self.turn_started = self.record.started = time.time()

    # --- Checks -------------------------------------------------------------------------------

    def _valid_id(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown client id {client_id}: this server trains "
                           f"clients 0..{self.num_clients - 1} (--num_clients={self.num_clients})")

    def _known(self, client_id: int) -> None:
        self._valid_id(client_id)
        if client_id not in self.expected_step:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"client {client_id} has not joined: call Join first")
        self.last_seen[client_id] = time.time()

    def _in_epoch(self, client_id: int) -> None:
        if self.epoch >= self.config.epochs:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, "training is finished")
        if client_id in self.done or client_id in self.skipped:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"client {client_id} has no turn in epoch "
                           f"{self.epoch + 1} ({'finished it' if client_id in self.done else 'timed out'})")
        if self.schedule == "sequential" and self._holder() != client_id:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"not client {client_id}'s turn "
                           f"(client {self._holder()} trains now)")

    def _step_number(self, client_id: int, step: int) -> None:
        expected = self.expected_step[client_id]
        if step < expected:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"stale step {step}: client {client_id}'s next "
                           f"step is {expected}")
        if step > expected:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"step {step} out of order: client {client_id}'s next "
                           f"step is {expected}")

    def _activations(self, tensor) -> np.ndarray:
        try:
            return protocol.decode(tensor, "activations", self.settings.wire, self.activation_shape)
        except ProtocolError as error:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None

    def _training_activations(self, request, layout: str, other_layout: str) -> np.ndarray:
        """The checks a training call starts with (a joined client, ``layout``, its turn); its activations.
        ``other_layout``: the error text for a run in the other layout. Called under the lock."""
        self._known(request.client_id)
        if self.settings.layout != layout:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, other_layout)
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
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"client {request.client_id} and the server "
                           f"disagree: {'; '.join(differences)}")
        with self.lock:
            self.expected_step[request.client_id] = int(request.next_step)
            self.last_seen[request.client_id] = time.time()
            self.pending.pop(request.client_id, None)
            self.left.discard(request.client_id)
            self.lock.notify_all()
            epochs_finished = self.epoch
        self.log(f"client {request.client_id} joined ({request.examples} training examples, next step "
                 f"{request.next_step})")
        return pb.JoinResponse(num_clients=self.num_clients, schedule=self.schedule, epochs_finished=epochs_finished)

    def AwaitTurn(self, request: pb.TurnRequest) -> pb.TurnResponse:
        deadline = time.time() + max(0.0, min(request.wait_seconds, 60.0))
        with self.lock:
            self._known(request.client_id)
            while True:
                self.last_seen[request.client_id] = time.time()
                self._expire(time.time())
                if self.epoch >= self.config.epochs:
                    return self.hand_over(pb.TurnResponse(done=True, epoch=self.epoch))  # the half to evaluate
                if self._may_train(request.client_id):
                    if self.schedule == "sequential":
                        self.turn_started = time.time()
                        self.log(f"epoch {self.epoch + 1}: client {request.client_id}'s turn")
                    response = self.hand_over(pb.TurnResponse(go=True, epoch=self.epoch))
                    if not self.record.clients:  # the epoch's clock starts with its first turn
                        self.record.started = time.time()
                    self.record.clients.append(request.client_id)
                    return response
                remaining = deadline - time.time()
                if remaining <= 0:
                    return pb.TurnResponse(go=False, epoch=self.epoch)
                self.lock.wait(min(remaining, TURN_POLL_SECONDS))

    def hand_over(self, response: pb.TurnResponse) -> pb.TurnResponse:
        """Puts the client half a turn starts from into ``response``: the relayed or averaged weights, and the
        signed halves behind them (clients with a shared key check and average those themselves)."""
        if self.client_weights is not None:
            response.client_weights.extend(protocol.encode_weights(self.client_weights))
        response.peer_halves.extend(self.handed_halves)
        return response

    # Each method runs whole under the lock, its checks in the order of their error messages' precedence.

    def Step(self, request: pb.StepRequest) -> pb.StepResponse:
        with self.lock:
            activations = self._training_activations(
                request, "plain", "Step is the plain layout's; this run is U-shaped (Forward, then Backward)")
            labels = np.asarray(request.labels, np.int32)
            if len(labels) != len(activations):
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{len(labels)} labels for {len(activations)} "
                               "activations")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.info.num_classes):
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"labels must be 0..{self.info.num_classes - 1}, "
                               f"got {labels.min()}..{labels.max()}")
            self._step_number(request.client_id, request.step)
            gradient, loss, correct = self.half.plain_step(activations, labels)
            self.expected_step[request.client_id] += 1
            response = pb.StepResponse(gradient=protocol.encode(gradient, self.settings.wire), loss=loss,
                                       correct=correct)
            self.record.task.add({"loss": loss, "correct": correct, "count": len(labels), "dcor": 0.0,
                                  "dcor_weight": 0.0})
            self.record.examples += len(labels)
            self.record.steps += 1
            self._count(request.client_id, request, response)
        return response

    def Forward(self, request: pb.ForwardRequest) -> pb.ForwardResponse:
        with self.lock:
            activations = self._training_activations(
                request, "u_shaped", "Forward is the U-shaped layout's; this run is plain (Step)")
            self._step_number(request.client_id, request.step)
            outputs, tape = self.half.forward(activations)
            self.pending[request.client_id] = (request.step, tape, len(activations))
            response = pb.ForwardResponse(outputs=protocol.encode(outputs, self.settings.wire))
            self._count(request.client_id, request, response)
        return response

    def Backward(self, request: pb.BackwardRequest) -> pb.BackwardResponse:
        with self.lock:
            self._known(request.client_id)
            self._in_epoch(request.client_id)
            step, tape, batch = self.pending.get(request.client_id, (None, None, 0))
            if step != request.step:
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"stale step {request.step}: client "
                               f"{request.client_id} has no forward pass of that step waiting")
            try:
                gradient = protocol.decode(request.gradient, "gradient", self.settings.wire, self.half.output_shape)
            except ProtocolError as error:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            if len(gradient) != batch:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"gradient for {len(gradient)} examples; the "
                               f"forward pass had {batch}")
            del self.pending[request.client_id]
            cut_gradient = self.half.backward(tape, gradient)
            self.expected_step[request.client_id] += 1
            response = pb.BackwardResponse(gradient=protocol.encode(cut_gradient, self.settings.wire))
            self.record.examples += batch
            self.record.steps += 1
            self._count(request.client_id, request, response)
        return response

    def Evaluate(self, request: pb.EvaluateRequest) -> pb.EvaluateResponse:
        with self.lock:
            self._known(request.client_id)
            outputs = self.half.predict(self._activations(request.activations))
        return pb.EvaluateResponse(outputs=protocol.encode(outputs, self.settings.wire))

    def EndEpoch(self, request: pb.EpochEndRequest) -> pb.EpochEndResponse:
        with self.lock:
            self._known(request.client_id)
            try:
                weights = protocol.decode_weights(request.client_weights, self.client_weight_shapes)
            except ProtocolError as error:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            if request.epoch != self.epoch:
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"stale epoch {request.epoch + 1}: the server "
                               f"is at epoch {self.epoch + 1}")
            self._in_epoch(request.client_id)
            half = pb.SignedHalf(sender=request.client_id, epoch=request.epoch, examples=request.examples,
                                 weights=request.client_weights, tag=request.weights_tag)
            if self.schedule == "sequential":
                self.client_weights = weights
                self.handed_halves = [half]
            self.submitted[request.client_id] = (weights, max(int(request.examples), 1))
            self.submitted_halves[request.client_id] = half
            self.done.add(request.client_id)
            self.turn_started = time.time()
            self.log(f"epoch {self.epoch + 1}: client {request.client_id} done ({request.examples} examples, loss "
                     f"{request.loss:.4f}, accuracy {request.accuracy:.4f})")
            self._finish_epoch_if_done()
            self.lock.notify_all()
        return pb.EpochEndResponse()

    def Leave(self, request: pb.LeaveRequest) -> pb.LeaveResponse:
        with self.lock:
            self._known(request.client_id)
            self.left.add(request.client_id)
            self.lock.notify_all()
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

    def expire_silent(self) -> None:
        """Leaves out the clients silent for longer than the timeout (and ends the epoch if that was all)."""
        with self.lock:
            self._expire(time.time())

    def _expire(self, now: float) -> None:
        if self.schedule == "sequential":
            holder = self._holder()
            if holder is not None and now - max(self.heard_from(holder, now), self.turn_started) > self.timeout:
                self.skipped.add(holder)
                self.turn_started = now
                self.log(f"epoch {self.epoch + 1}: client {holder} silent for {self.timeout:g} s; its turn passes")
        else:
            for client in range(self.num_clients):
                if client not in self.done and client not in self.skipped and \
                        now - max(self.heard_from(client, now), self.record.started) > self.timeout:
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
            self.handed_halves = [self.submitted_halves[client] for client in sorted(self.submitted_halves)]
        record = self.record
        self.history.append({
            "epoch": self.epoch + 1, "seconds": round(time.time() - record.started, 3), "steps": record.steps,
            "examples": record.examples, "clients_trained": sorted(self.done), "clients_left_out": sorted(self.skipped),
            "train_loss": record.task.as_dict()["loss"] if record.task.count else None,
            "train_accuracy": record.task.as_dict()["accuracy"] if record.task.count else None,
            "bytes_received": {str(k): v for k, v in sorted(record.bytes_received.items())},
            "bytes_sent": {str(k): v for k, v in sorted(record.bytes_sent.items())}})
        self.epoch += 1
        self.done.clear()
        self.skipped.clear()
        self.submitted.clear()
        self.submitted_halves.clear()
        self.record = EpochRecord()
        self.turn_started = time.time()
        self.save()
        self.log(f"epoch {self.epoch}/{self.config.epochs} finished ({self.history[-1]['seconds']:.1f} s); "
                 "checkpointed")

    # --- The end --------------------------------------------------------------------------------

    def finished(self) -> bool:
        """Training is over and every client still around has said it is done (or gone silent)."""
        with self.lock:
            if self.epoch < self.config.epochs:
                return False
            now = time.time()
            waiting = [c for c in self.expected_step if c not in self.left and now - self.heard_from(c, now) < self.timeout]
            return not waiting

    def write_model_dir(self) -> dict:
        """Writes server.keras and metrics.json; returns the metrics."""
        with self.lock:
            history = list(self.history)
        metrics = {**self.config.to_json(), **self.settings.to_json(), "split_side": "server",
                   "schedule": self.schedule, "num_clients": self.num_clients,
                   **training.model_metrics(self.config, self.split, self.info),
                   "epochs_history": history}
        model_dir_lib.save_model(self.model_dir, self.half.model, metrics, model_file=model_dir_lib.SERVER_MODEL_FILE)
        return metrics


