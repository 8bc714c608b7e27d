"""What the split server and its clients agree on: the settings, the wire encodings, the gRPC methods.

No TensorFlow here: tensors cross the wire as numpy arrays in :class:`split_training_pb2.Tensor`
messages (split_training.proto). Both programs use the same functions, so an encoding is written once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os

import numpy as np

from nopeek_tf import config as config_lib
from nopeek_tf.config import setting

from . import split_training_pb2 as pb

LAYOUTS = ("plain", "u_shaped")
SCHEDULES = ("sequential", "splitfed")
WIRES = ("float32", "float16", "int8")
SERVICE = "nopeek_split.SplitTraining"
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # a client half's weights travel in one message
# Flags that may differ between the server and a client: where each side keeps its files and runs.
PER_MACHINE_FLAGS = ("data_dir", "test_fraction", "strategy", "devices", "peer_timeout_seconds", "cpu_devices",
                     "leakage_images", "dcor_batch_size", "defence", "strict")
_WIRE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1")}


def check_split_config(config: config_lib.TrainConfig) -> None:
    """Refuses the training flags split training does not support (one line naming the flag); both sides check."""
    if config.strategy != "default":
        raise config_lib.ConfigError("--strategy: split training runs each side on one device (--strategy=default)")
    if config.mixed_precision:
        raise config_lib.ConfigError("--mixed_precision is not supported in split training")
    if config.adversary_weight:
        raise config_lib.ConfigError("--adversary_weight (attacker-aware training) is not supported in split "
                                     "training")


def define_flags(side_settings: type) -> None:
    """Defines the flags of a split program: train.train's training flags, :class:`SplitSettings` and its
    side's own (:class:`ServerSettings` or :class:`ClientSettings`)."""
    for settings_class in (config_lib.TrainConfig, SplitSettings, side_settings):
        config_lib.define_flags(settings_class)


def settings_from_flags(side_settings: type):
    """The parsed flags of a split program: (TrainConfig with the recommended defence applied as the flags
    ask, SplitSettings, the side's settings), each checked (ConfigError naming the flag)."""
    config = config_lib.from_flags(config_lib.TrainConfig, verbose=2)
    config = config.with_defence(given=config_lib.given_flags(config_lib.TrainConfig))
    split_settings = config_lib.from_flags(SplitSettings)
    side = config_lib.from_flags(side_settings)
    split_settings.validate()
    side.validate()
    return config, split_settings, side


class StatusError(Exception):
    """A failed call and its gRPC status ``code`` (a grpc.StatusCode, or None when unknown); the text names the
    problem. The server answers its own with that status; a client raises one for a call the server failed."""

    def __init__(self, code, message: str):
        super().__init__(message)
        self.code = code


class ProtocolError(ValueError):
    """A message that cannot be applied; the text names what is wrong (the server answers it as an error)."""


@dataclasses.dataclass(frozen=True)
class SplitSettings(config_lib.Settings):
    """How the two halves talk; both programs take these flags and must agree on them."""

    layout: str = setting("plain", "plain: the client sends activations and labels, the server holds every "
                          "layer after the cut; u_shaped: the client also keeps the last layer and the labels "
                          "(no label reaches the server).", choices=LAYOUTS)
    wire: str = setting("float32", "Encoding of activations and gradients on the network: float32, float16 "
                        "(half the bytes) or int8 (a quarter; symmetric, one scale per tensor).", choices=WIRES)


@dataclasses.dataclass(frozen=True)
class ServerSettings(config_lib.Settings):
    """The split server's own flags."""

    port: int = setting(50061, "The gRPC port to listen on (all interfaces).", minimum=0)
    num_clients: int = setting(1, "Clients that train (client ids 0 .. num_clients-1).", minimum=1)
    schedule: str = setting("sequential", "sequential: clients take turns, each trains an epoch on its data and "
                            "passes the client half to the next; splitfed: clients train at the same time and the "
                            "client halves are averaged (weighted by examples) after each epoch.",
                            choices=SCHEDULES)
    client_timeout_seconds: float = setting(300.0, "A client silent this long is left out: the next client "
                                            "takes its turn (sequential), the epoch ends without it (splitfed). "
                                            "It may rejoin later.", above=0)
    ssl_config_file: str | None = setting(None, "gRPC TLS: an SSLConfig text proto (server_key, server_cert, and "
                                          "custom_ca with client_verify: true for mutual TLS), as "
                                          "serving.server's.")


@dataclasses.dataclass(frozen=True)
class ClientSettings(config_lib.Settings):
    """A split client's own flags."""

    server: str = setting("localhost:50061", "The split server, HOST:PORT.")
    client_id: int = setting(-1, "This client's id, 0 .. the server's --num_clients - 1 (default: --shard).")
    shard: int = setting(0, "Train on shard i of --num_shards of the dataset (an offline dataset split among "
                         "simulated clients; a real client gives its own --data_dir and --num_shards=1).",
                         minimum=0)
    num_shards: int = setting(1, "Shards the training split is cut into.", minimum=1)
    connect_retries: int = setting(30, "Attempts to reach the server (Join) before giving up, 2 s apart; also "
                                   "after the server restarts mid-run.", minimum=0)
    ca_file: str | None = setting(None, "CA certificate (PEM) of the server: turns TLS on.")
    client_cert: str | None = setting(None, "Client certificate (PEM) for mutual TLS (with --client_key).")
    client_key: str | None = setting(None, "Client key (PEM) for mutual TLS.")
    peer_key_file: str | None = setting(None, "A secret file the clients share and the server never sees: each "
                                        "client half that passes through the server is tagged with an HMAC "
                                        "of it, and a half whose tag does not verify is refused (the "
                                        "clients average the signed halves themselves under splitfed).")
    hijack_check_every: int = setting(50, "Probe the server at the first two steps, then about once per this "
                                      "many: resend a batch with every label changed and stop with a 'hijack' "
                                      "error when its answer does not change (a server training its own loss). "
                                      "Each probe costs an honest server a step on wrong labels; 0: never.",
                                      minimum=0)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        config_lib.check(self)
        if self.shard >= self.num_shards:
            raise config_lib.ConfigError(f"--shard must be below --num_shards ({self.num_shards}), got {self.shard}")
        if bool(self.client_cert) != bool(self.client_key):
            raise config_lib.ConfigError("--client_cert and --client_key go together (mutual TLS)")
        if self.client_cert and not self.ca_file:
            raise config_lib.ConfigError("--client_cert needs --ca_file (TLS)")
        if ":" not in self.server:
            raise config_lib.ConfigError(f"--server must be HOST:PORT, got {self.server!r}")

    @property
    def id(self) -> int:
        """The client id (``--client_id``, else ``--shard``)."""
        return self.client_id if self.client_id >= 0 else self.shard


# --- Agreement at connection -------------------------------------------------------------------

def agreement_json(config: config_lib.TrainConfig, settings: SplitSettings) -> str:
    """What a client sends at Join: the flags that must match the server's."""
    values = {key: value for key, value in config.to_json().items() if key not in PER_MACHINE_FLAGS}
    return json.dumps({**values, **settings.to_json()}, sort_keys=True)


def disagreements(client_json: str, server_json: str) -> list[str]:
    """``--flag: client X, server Y`` for every flag the two sides set differently."""
    try:
        client = json.loads(client_json)
    except ValueError:
        return ["the client's settings are not JSON"]
    server = json.loads(server_json)
    return [f"--{key}: client {client.get(key)!r}, server {server.get(key)!r}"
            for key in sorted(set(client) | set(server)) if client.get(key) != server.get(key)]


# --- Tensors on the wire ------------------------------------------------------------------------

def encode(array: np.ndarray, wire: str) -> pb.Tensor:
    """``array`` as a Tensor message in the ``wire`` encoding (int8: one symmetric scale per tensor)."""
    array = np.asarray(array, np.float32)
    tensor = pb.Tensor(shape=list(array.shape), wire=pb.Wire.Value(wire.upper()))
    if wire == "int8":
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        tensor.scale = scale
        tensor.data = np.clip(np.rint(array / np.float32(tensor.scale)), -127, 127).astype(np.int8).tobytes()
    else:
        tensor.data = np.ascontiguousarray(array, _WIRE_DTYPES[wire]).tobytes()  # one copy, not two
    return tensor


def decode(tensor: pb.Tensor, name: str, wire: str | None = None, trailing_shape=None) -> np.ndarray:
    """A Tensor message as float32, after checking it.

    Args:
      tensor: the message.
      name: what it holds ("activations", ...), for the error text.
      wire: the encoding it must use (None: any).
      trailing_shape: the shape after the batch dimension it must have (None: any).

    Raises:
      ProtocolError: another encoding, a size that does not hold the shape, another shape, NaN or Inf.
    """
    kind = pb.Wire.Name(tensor.wire).lower() if tensor.wire in pb.Wire.values() else str(tensor.wire)
    if kind not in _WIRE_DTYPES:
        raise ProtocolError(f"{name}: unknown wire encoding {kind}")
    if wire is not None and kind != wire:
        raise ProtocolError(f"{name} are {kind}; this run's wire is {wire} (--wire)")
    shape = [int(size) for size in tensor.shape]
    if any(size < 0 for size in shape):
        raise ProtocolError(f"{name}: negative shape {shape}")
    dtype = _WIRE_DTYPES[kind]
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ProtocolError(f"{name}: {len(tensor.data)} bytes do not hold shape {shape} in {kind} ({expected} bytes)")
    if trailing_shape is not None and (len(shape) < 1 or tuple(shape[1:]) != tuple(trailing_shape)):
        raise ProtocolError(f"{name} have shape {shape}; expected [batch, {', '.join(map(str, trailing_shape))}]")
    values = np.frombuffer(tensor.data, dtype).reshape(shape).astype(np.float32, copy=False)  # read-only if float32
    if kind == "int8":
        if not math.isfinite(tensor.scale) or tensor.scale <= 0:
            raise ProtocolError(f"{name}: int8 scale must be a positive number, got {tensor.scale}")
        values = values * np.float32(tensor.scale)
    if not np.all(np.isfinite(values)):
        raise ProtocolError(f"{name} hold NaN or Inf")
    return values


def encode_weights(weights: list[np.ndarray]) -> list[pb.Tensor]:
    """A client half's weights (always float32: they are averaged and trained on)."""
    return [encode(weight, "float32") for weight in weights]


def decode_weights(tensors, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Weights sent for a client half of ``shapes``; ProtocolError when they do not fit it."""
    if len(tensors) != len(shapes):
        raise ProtocolError(f"client weights: {len(tensors)} tensors for a client half of {len(shapes)}")
    weights = [decode(tensor, "client weights", "float32") for tensor in tensors]
    for weight, shape in zip(weights, shapes):
        if tuple(weight.shape) != tuple(shape):
            raise ProtocolError(f"client weights: shape {list(weight.shape)} where the client half has {list(shape)}")
    return weights


# --- Hand-overs the server cannot forge ---------------------------------------------------------

PEER_KEY_MIN_BYTES = 16


def read_peer_key(path: str) -> bytes:
    """The clients' shared secret (``--peer_key_file``): the file's bytes; ConfigError naming the flag when it
    cannot be read or is too short to be a key."""
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as error:
        raise config_lib.ConfigError(f"--peer_key_file {path}: cannot read it ({error.strerror or error})") from None
    if len(key) < PEER_KEY_MIN_BYTES:
        raise config_lib.ConfigError(f"--peer_key_file {path}: {len(key)} bytes; a key needs at least "
                                     f"{PEER_KEY_MIN_BYTES} (e.g. head -c 32 /dev/urandom | base64 > {path})")
    return key


def new_peer_key(path: str) -> None:
    """Writes a fresh random key for ``--peer_key_file`` (mode 0600)."""
    with open(path, "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(path, 0o600)


def half_tag(key: bytes, sender: int, epoch: int, examples: int, weights: list[np.ndarray]) -> bytes:
    """HMAC-SHA256 of a client half: its sender, epoch, example count and every weight (shape and float32
    bytes), so that a half cannot be altered, replaced, replayed from another epoch or passed off as another
    client's without the key."""
    digest = hmac.new(key, f"nopeek-split-half|{int(sender)}|{int(epoch)}|{int(examples)}".encode(), hashlib.sha256)
    for weight in weights:
        weight = np.ascontiguousarray(weight, np.dtype("<f4"))
        digest.update(f"|{list(weight.shape)}|".encode())
        digest.update(weight.tobytes())
    return digest.digest()


# --- gRPC methods -------------------------------------------------------------------------------

METHODS = {  # name: (request, response)
    "Join": (pb.JoinRequest, pb.JoinResponse),
    "AwaitTurn": (pb.TurnRequest, pb.TurnResponse),
    "Step": (pb.StepRequest, pb.StepResponse),
    "Forward": (pb.ForwardRequest, pb.ForwardResponse),
    "Backward": (pb.BackwardRequest, pb.BackwardResponse),
    "Evaluate": (pb.EvaluateRequest, pb.EvaluateResponse),
    "EndEpoch": (pb.EpochEndRequest, pb.EpochEndResponse),
    "Leave": (pb.LeaveRequest, pb.LeaveResponse),
}
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def generic_handler(servicer):
    """The gRPC handler that routes each method of :data:`METHODS` to ``servicer.<Method>(request, context)``."""
    import grpc

    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                          request_deserializer=request.FromString,
                                                          response_serializer=response.SerializeToString)
                for name, (request, response) in METHODS.items()}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class Stub:
    """Calls the service's methods on a channel: ``stub.Step(request, timeout=...)``."""

    def __init__(self, channel):
        for name, (request, response) in METHODS.items():
            setattr(self, name, channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                                                    response_deserializer=response.FromString))


def open_channel(settings: ClientSettings):
    """A channel to ``settings.server``: TLS with ``ca_file``, mutual TLS with the client certificate too."""
    import grpc

    if not settings.ca_file:
        return grpc.insecure_channel(settings.server, options=CHANNEL_OPTIONS)

    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as error:
            raise config_lib.ConfigError(f"cannot read {path}: {error.strerror}") from None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(settings.ca_file),
        private_key=read(settings.client_key) if settings.client_key else None,
        certificate_chain=read(settings.client_cert) if settings.client_cert else None)
    return grpc.secure_channel(settings.server, credentials, options=CHANNEL_OPTIONS)
