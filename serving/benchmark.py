r"""Load benchmark of the local server (prints figures; not a test).

  python -m serving.benchmark --export_dir=runs/quickstart/export

1. Batch-1 latency: the median (p50) of --sequential requests one after the
   other over REST and over gRPC, against the in-process call of the same
   SavedModel signature; the difference is what the protocol and server cost.
2. Load: --clients concurrent clients each sending --requests batch-1 requests
   (gRPC and REST), against the server without and with --enable_batching
   (the export's batching_parameters.txt, as deployed): requests/s, p50, p99,
   errors, and the batched/unbatched throughput ratio.

The server runs in its own process (python -m serving.server), the clients in
this one (asyncio, one connection per client); both share this machine's
cores, so a ratio compares figures of one run on one machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import runtime

FLAGS = flags.FLAGS


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def start_server(model_name: str, base_path: str, batching_file: str | None) -> tuple[subprocess.Popen, int, int]:
    """python -m serving.server on free loopback ports; returns (process, rest port, grpc port) once it answers."""
    import requests

    from nopeek_tf.training.distribute import free_ports

    rest_port, grpc_port = free_ports(2)
    args = [sys.executable, "-m", f"{__package__ or 'serving'}.server", f"--model_name={model_name}", f"--model_base_path={base_path}",
            f"--rest_api_port={rest_port}", f"--port={grpc_port}"]
    if batching_file:
        args += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{model_name}", timeout=5).ok:
                return process, rest_port, grpc_port
        except requests.exceptions.ConnectionError:
            pass
        if process.poll() is not None or time.time() > deadline:
            sys.exit(f"error: the server did not start: {process.communicate()[1].strip().splitlines()[-1:]}")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


class Clients:
    """Batch-1 predict calls over REST (aiohttp) or gRPC (grpc.aio with the official messages)."""

    def __init__(self, model_name: str, activations, rest_port: int, grpc_port: int):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.model_name, self.rest_port, self.grpc_port = model_name, rest_port, grpc_port
        self.rest_body = {"instances": activations.tolist()}
        self.grpc_request = predict_pb2.PredictRequest()
        self.grpc_request.model_spec.name = model_name
        self.grpc_request.inputs["activations"].CopyFrom(tf.make_tensor_proto(activations))

    async def run(self, transport: str, clients: int, requests_each: int) -> tuple[list[float], int, float]:
        """(latencies in ms, errors, seconds) of ``clients`` concurrent clients x ``requests_each`` requests."""
        import aiohttp
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        latencies, errors = [], 0

        async def rest_client():
            nonlocal errors
            url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model_name}:predict"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
                for _ in range(requests_each):
                    start = time.perf_counter()
                    async with session.post(url, json=self.rest_body) as answer:
                        await answer.read()
                        errors += answer.status != 200
                    latencies.append((time.perf_counter() - start) * 1000)

        async def grpc_client():
            nonlocal errors
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for _ in range(requests_each):
                    start = time.perf_counter()
                    try:
                        await stub.Predict(self.grpc_request, timeout=60)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    latencies.append((time.perf_counter() - start) * 1000)

        client = rest_client if transport == "rest" else grpc_client
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return latencies, errors, time.perf_counter() - start


def in_process_p50(base_path: str, activations, runs: int) -> float:
    """p50 (ms) of calling the served SavedModel's serving_default in this process."""
    import tensorflow as tf

    versions = [int(v) for v in os.listdir(base_path) if v.isdigit()]
    signature = tf.saved_model.load(os.path.join(base_path, str(max(versions)))).signatures["serving_default"]
    x = tf.constant(activations)
    return 1000.0 * runtime.median_seconds(
        lambda: {key: value.numpy() for key, value in signature(activations=x).items()}, runs, warmup=20)


def main(argv):
    runtime.start_tensorflow_script(argv)
    import numpy as np

    client_dir = os.path.join(FLAGS.export_dir, "client")
    try:
        manifest = manifest_lib.Manifest.load(client_dir)
    except (OSError, ValueError) as error:
        sys.exit(f"error: --export_dir {FLAGS.export_dir}: no readable client/manifest.json ({error})")
    if min(FLAGS.clients, FLAGS.requests, FLAGS.sequential) < 1:
        sys.exit("error: --clients, --requests and --sequential must be at least 1")
    serving_dir = os.path.join(FLAGS.export_dir, "serving")
    base_path = os.path.join(serving_dir, manifest.model_name)
    batching_file = os.path.join(serving_dir, "batching_parameters.txt")
    activations = np.random.default_rng(0).normal(size=(1, *manifest.activation_shape)).astype(np.float32)
    print(f"{manifest.model_name}: batch-1 float32 activations {manifest.activation_shape}; "
          f"{os.cpu_count()} CPU cores shared by server and clients", flush=True)

    in_process = in_process_p50(base_path, activations, FLAGS.sequential)
    print(f"in-process SavedModel call: p50 {in_process:.2f} ms", flush=True)
    rows = []
    for batching in (False, True):
        process, rest_port, grpc_port = start_server(manifest.model_name, base_path,
                                                     batching_file if batching else None)
        try:
            clients = Clients(manifest.model_name, activations, rest_port, grpc_port)
            if not batching:
                for transport in ("rest", "grpc"):
                    latencies, errors, _ = asyncio.run(clients.run(transport, 1, FLAGS.sequential))
                    p50 = statistics.median(latencies)
                    print(f"batch-1 {transport}: p50 {p50:.2f} ms, {p50 - in_process:+.2f} ms over in-process "
                          f"({errors} errors)", flush=True)
            for transport in ("grpc", "rest"):
                asyncio.run(clients.run(transport, FLAGS.clients, 10))  # warm-up
                latencies, errors, seconds = asyncio.run(clients.run(transport, FLAGS.clients, FLAGS.requests))
                rows.append(dict(transport=transport, batching=batching, rps=len(latencies) / seconds,
                                 p50=percentile(latencies, 50), p99=percentile(latencies, 99), errors=errors))
                print(f"{FLAGS.clients} clients x {FLAGS.requests} {transport}, batching "
                      f"{'on' if batching else 'off'}: {rows[-1]['rps']:.0f} requests/s, p50 {rows[-1]['p50']:.1f} ms,"
                      f" p99 {rows[-1]['p99']:.1f} ms, {errors} errors", flush=True)
        finally:
            stop_server(process)

    print("\n| transport | batching | requests/s | p50 | p99 | errors | throughput vs unbatched |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        unbatched = next(r for r in rows if r["transport"] == row["transport"] and not r["batching"])
        print(f"| {row['transport']} | {'on' if row['batching'] else 'off'} | {row['rps']:.0f} | {row['p50']:.1f} ms "
              f"| {row['p99']:.1f} ms | {row['errors']} | {row['rps'] / unbatched['rps']:.2f}x |")


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("export_dir", None, "An export dir written by python -m export.export.", required=True)
    flags.DEFINE_integer("clients", 16, "Concurrent clients of the load test.")
    flags.DEFINE_integer("requests", 500, "Requests per client in the load test.")
    flags.DEFINE_integer("sequential", 300, "Requests of the batch-1 latency test (one at a time).")


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
