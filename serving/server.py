r"""A local server that speaks TF Serving's REST and gRPC protocol over an exported folder.

For development, the quick start and tests; production runs the real
tensorflow_model_server (serving/docker-compose.yml, serving/kubernetes.yaml),
and the flags below carry its names so that one can replace the other:

  python -m serving.server --model_name=nopeek_orl_faces \
      --model_base_path=runs/orl_faces_orl_cnn_conv2_alpha1/export/serving/nopeek_orl_faces
  python -m serving.server --model_config_file=my_models.config   # several models

REST on --rest_api_port (8501), gRPC on --port (8500). Binds --host (default
127.0.0.1, this machine only; TF Serving binds every interface). Serves each
model's version policy (default: the latest version; models.config may say
latest N, all or specific, and name version labels), picks up new versions
every --file_system_poll_wait_seconds and re-reads models.config every
--model_config_file_poll_wait_seconds. --enable_batching with
--batching_parameters_file merges concurrent requests into one model call.
gRPC TLS with --ssl_config_file (TF Serving's SSLConfig text proto); REST TLS,
which TF Serving leaves to a proxy, with --rest_ssl_cert_file and
--rest_ssl_key_file. SIGTERM or Ctrl-C stops accepting requests, lets those in
flight finish (up to --drain_seconds) and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import runtime

FLAGS = flags.FLAGS


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


def read_ssl_config(path: str):
    """The gRPC server credentials of an SSLConfig text proto file."""
    import grpc

    from .proto import ssl_config_pb2
    from .servables import read_text_proto

    try:
        config = read_text_proto(path, ssl_config_pb2.SSLConfig())
    except ValueError as error:
        raise ConfigError(f"--ssl_config_file {path}: {error}") from None
    if not config.server_key or not config.server_cert:
        raise ConfigError(f"--ssl_config_file {path}: needs server_key and server_cert (PEM contents)")
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify)


def model_configs(model_name: str | None, model_base_path: str | None, model_config_file: str | None) -> dict:
    """{name: ModelConfig} from either --model_name/--model_base_path or --model_config_file."""
    from .servables import ModelConfigError, parse_models_config, single_model_config

    if model_config_file:
        if model_base_path:
            raise ConfigError("give either --model_config_file or --model_base_path, not both")
        try:
            configs = parse_models_config(model_config_file)
        except ModelConfigError as error:
            raise ConfigError(f"--model_config_file {model_config_file}: {error}") from None
        if not configs:
            raise ConfigError(f"--model_config_file {model_config_file} lists no model")
    elif model_base_path:
        configs = single_model_config(model_name or "default", model_base_path)
    else:
        raise ConfigError("--model_base_path (with --model_name) or --model_config_file is required")
    for name, config in configs.items():
        if not os.path.isdir(config.base_path):
            raise ConfigError(f"model {name}: base path {config.base_path} is not a folder")
    return configs


def batching_parameters(enable_batching: bool, parameters_file: str | None):
    """The BatchingParameters of --enable_batching/--batching_parameters_file, or None (no batching)."""
    from .batching import BatchingParameters, read_batching_parameters

    if not enable_batching:
        if parameters_file:
            print("note: --batching_parameters_file has no effect without --enable_batching (as in TF Serving)",
                  flush=True)
        return None
    if not parameters_file:
        return BatchingParameters()
    try:
        return read_batching_parameters(parameters_file)
    except ValueError as error:
        raise ConfigError(f"--batching_parameters_file {parameters_file}: {error}") from None


async def serve(manager, host: str, rest_port: int, grpc_port: int, max_body_bytes: int,
                grpc_credentials=None, rest_ssl_context: ssl.SSLContext | None = None,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                rest_middlewares=(), grpc_interceptors=(), batching=None, drain_seconds: float = 10.0) -> None:
    """Runs the REST and gRPC servers until ``stop`` is set (or forever).

    Args:
      batching: BatchingParameters to batch concurrent requests, or None.
      drain_seconds: once ``stop`` is set, how long requests in flight may take
        to finish; new ones are refused at once.
    """
    import grpc
    from aiohttp import web

    from . import grpc_service, rest
    from .batching import Predictor

    predictor = Predictor(batching)
    runner = web.AppRunner(rest.make_app(manager, max_body_bytes, rest_middlewares, predictor), access_log=None,
                           shutdown_timeout=drain_seconds)
    await runner.setup()
    await web.TCPSite(runner, host, rest_port, ssl_context=rest_ssl_context).start()
    options = [("grpc.max_receive_message_length", max_body_bytes)]
    server = grpc.aio.server(options=options, interceptors=list(grpc_interceptors))
    grpc_service.add_to_server(server, manager, predictor)
    address = f"{host}:{grpc_port}"
    bound = (server.add_secure_port(address, grpc_credentials) if grpc_credentials
             else server.add_insecure_port(address))
    if not bound:
        raise ConfigError(f"--port {grpc_port}: cannot bind {address}")
    await server.start()
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        # Both stop listening at once and wait for the requests in flight (grpc's grace, aiohttp's shutdown_timeout).
        await asyncio.gather(server.stop(grace=drain_seconds), runner.cleanup())


def main(argv):
    runtime.start_tensorflow_script(argv)
    from .servables import ModelConfigError, ModelManager

    try:
        configs = model_configs(FLAGS.model_name, FLAGS.model_base_path, FLAGS.model_config_file)
        batching = batching_parameters(FLAGS.enable_batching, FLAGS.batching_parameters_file)
        credentials = read_ssl_config(FLAGS.ssl_config_file) if FLAGS.ssl_config_file else None
        rest_ssl = None
        if FLAGS.rest_ssl_cert_file or FLAGS.rest_ssl_key_file:
            if not (FLAGS.rest_ssl_cert_file and FLAGS.rest_ssl_key_file):
                raise ConfigError("--rest_ssl_cert_file and --rest_ssl_key_file go together")
            rest_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                rest_ssl.load_cert_chain(FLAGS.rest_ssl_cert_file, FLAGS.rest_ssl_key_file)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(f"--rest_ssl_cert_file/--rest_ssl_key_file: {error}") from None
        manager = ModelManager(configs, FLAGS.allow_version_labels_for_unavailable_models)
        try:
            manager.configure(configs)
        except ModelConfigError as error:
            raise ConfigError(f"--model_config_file {FLAGS.model_config_file}: {error}") from None
        for name, config in configs.items():
            versions = manager.versions(name)
            if versions:
                print(f"serving {name} version {', '.join(map(str, versions))} from {config.base_path}", flush=True)
            else:
                print(f"model {name}: no version yet under {config.base_path}; waiting for one", flush=True)
        manager.start_polling(FLAGS.file_system_poll_wait_seconds, FLAGS.model_config_file,
                              FLAGS.model_config_file_poll_wait_seconds,
                              on_change=lambda line: print(line, flush=True))
        scheme = "https" if rest_ssl else "http"
        print(f"REST on {scheme}://{FLAGS.host}:{FLAGS.rest_api_port}, gRPC on {FLAGS.host}:{FLAGS.port}"
              f"{' (TLS)' if credentials else ''}"
              f"{f'; batching up to {batching.max_batch_size} rows' if batching else ''}", flush=True)

        async def run():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            def on_signal(name):
                print(f"{name}: no new requests; finishing those in flight (up to {FLAGS.drain_seconds:g} s)",
                      flush=True)
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig.name)
            await serve(manager, FLAGS.host, FLAGS.rest_api_port, FLAGS.port, FLAGS.max_body_bytes,
                        credentials, rest_ssl, stop=stop, batching=batching, drain_seconds=FLAGS.drain_seconds)

        asyncio.run(run())
        manager.stop()
        print("stopped", flush=True)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot listen on {FLAGS.host} (--port {FLAGS.port}, --rest_api_port "
                 f"{FLAGS.rest_api_port}): {error.strerror or error}")


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_integer("port", 8500, "gRPC port (as tensorflow_model_server).")
    flags.DEFINE_integer("rest_api_port", 8501, "REST port (as tensorflow_model_server).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 for every interface.")
    flags.DEFINE_string("model_name", None, "Model name (with --model_base_path).")
    flags.DEFINE_string("model_base_path", None, "Folder of numeric version folders of one model.")
    flags.DEFINE_string("model_config_file", None, "A model_config_list text proto (several models).")
    flags.DEFINE_string("ssl_config_file", None, "gRPC TLS: an SSLConfig text proto (server_key, server_cert, "
                        "custom_ca, client_verify), as tensorflow_model_server takes it.")
    flags.DEFINE_string("rest_ssl_cert_file", None, "REST TLS: the server certificate (PEM file).")
    flags.DEFINE_string("rest_ssl_key_file", None, "REST TLS: the server key (PEM file).")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "How often to look for new versions.")
    flags.DEFINE_float("model_config_file_poll_wait_seconds", 0.0, "How often to re-read --model_config_file "
                       "(models, version policies, labels); 0: never (as tensorflow_model_server).")
    flags.DEFINE_bool("allow_version_labels_for_unavailable_models", False, "Let models.config label a version "
                      "that is not loaded (as tensorflow_model_server).")
    flags.DEFINE_bool("enable_batching", False, "Merge concurrent requests into one model call "
                      "(as tensorflow_model_server).")
    flags.DEFINE_string("batching_parameters_file", None, "TF Serving's BatchingParameters text proto "
                        "(max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads, "
                        "allowed_batch_sizes); with --enable_batching.")
    flags.DEFINE_float("drain_seconds", 10.0, "On SIGTERM or Ctrl-C, how long requests in flight may take to "
                       "finish (this server only).")
    flags.DEFINE_integer("max_body_bytes", 16 * 1024 * 1024, "Largest request accepted (REST and gRPC).")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
