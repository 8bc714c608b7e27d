"""The split server: the half of the network after the cut, its optimizer, and the clients' schedule.

It holds no images. Each step a client sends its activations (and labels, in the plain layout); the
server runs its half, answers the gradient at the cut and applies its own optimizer step. Between
epochs it passes the client half from one client to the next (``sequential``) or averages the
clients' halves weighted by their examples (``splitfed``). ``python -m train.split_server`` runs
:func:`serve`. The state machine is :mod:`nopeek_tf.split_learning.server_state`; this module is
the gRPC service around it.

Faults: a client silent for ``client_timeout_seconds`` is left out of the epoch (its turn passes, or
the average goes on without it) and may rejoin; the server checkpoints after every epoch and a
restarted server resumes from there. A bad message (shape, dtype, NaN/Inf, unknown client, stale
step, not its turn) is answered with an error status naming it, and nothing is applied.
"""

from __future__ import annotations

import time
from concurrent import futures
from typing import Callable

import grpc

from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf import training
from nopeek_tf.config import TrainConfig
from nopeek_tf.training import data

from . import protocol
from .protocol import StatusError
from .server_state import ServerState


def settle_config(config: TrainConfig, class_names=None) -> tuple[TrainConfig, data.DatasetInfo]:
    """The server's config with defaults, defence, arch and cut resolved, and the dataset's shape, from no images."""
    def describe(settled: TrainConfig, image_size, channels) -> data.DatasetInfo:
        return data.describe(settled.dataset, settled.data_dir, image_size, channels, class_names)

    return training.resolve_config(config, describe, protocol.check_split_config)


class _Servicer:
    """Routes each gRPC method to the server's state machine, turning StatusError into an error status."""

    def __init__(self, state: ServerState):
        self.state = state
        for name in protocol.METHODS:
            setattr(self, name, self._wrap(name))

    def _wrap(self, name: str):
        method = getattr(self.state, name)

        def call(request, context):
            try:
                with self.state.call_of(request.client_id):
                    return method(request)
            except StatusError as error:
                context.abort(error.code, str(error))
        return call


def serve(config: TrainConfig, split_settings: protocol.SplitSettings, server_settings: protocol.ServerSettings,
          model_dir: str, credentials=None, log: Callable[[str], None] = print, class_names=None,
          ready: Callable[[int], None] | None = None, interceptors=(), make_state: Callable[..., ServerState] = ServerState
          ) -> dict:
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
      make_state: builds the state machine from ServerState's arguments (an attacking server's:
        :mod:`nopeek_tf.adversary`).

    Returns:
      The server's metrics.json.
    """
    config, info = settle_config(config, class_names)
    model_dir_lib.prepare(model_dir, config)
    state = make_state(config, info, split_settings, server_settings.num_clients, server_settings.schedule,
                       server_settings.client_timeout_seconds, model_dir, log=log)
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
    state.listening()
    if ready is not None:
        ready(port)
    try:
        while not state.finished():
            time.sleep(0.2)
            state.expire_silent()
    finally:
        server.stop(grace=2.0)
    metrics = state.write_model_dir()
    log(f"training finished: {config.epochs} epochs; wrote {model_dir}")
    return metrics
