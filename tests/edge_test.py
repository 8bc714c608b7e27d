"""The edge client: no TensorFlow, wire-compatible protos, preprocessing parity, TLS, faults, privacy."""

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from aiohttp import web
from tensorflow_serving.apis import predict_pb2 as official_predict

from edge import transport
from edge.client import EdgeClient, load_image
from edge.proto import predict_pb2 as edge_predict
from edge.transport import EdgeError, TlsFiles
from nopeek_tf.training import data
from nopeek_tf.core import models
from nopeek_tf.device.litert import ClientRunner
from tests.conftest import REPO_ROOT
from nopeek_tf.training.distribute import free_ports
from tests.local_server import Capture, LocalServer

MODEL = "nopeek_orl_faces"
ORL = data.orl_faces_dir()
FACES = [os.path.join(ORL, "s1", "1.pgm"), os.path.join(ORL, "s2", "5.pgm"), os.path.join(ORL, "s40", "10.pgm")]


@pytest.fixture(scope="module")
def served(exported):
    export_dir, manifest = exported
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)})
    yield server, export_dir, manifest
    server.stop()


def _tflite(export_dir, variant):
    return os.path.join(export_dir, "client", f"client_{variant}.tflite")


@pytest.mark.parametrize("transport_name", ["rest", "grpc"])
@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_classify_matches_the_keras_model(served, trained_dir, transport_name, variant):
    server, export_dir, manifest = served
    address = server.rest if transport_name == "rest" else server.grpc
    client = EdgeClient(_tflite(export_dir, variant), server=address, transport=transport_name)
    full = keras.models.load_model(os.path.join(trained_dir, "model.keras"), compile=False)
    for path in FACES:
        result = client.classify(path)
        pixels = load_image(path, manifest.preprocessing)[np.newaxis].astype(np.float32) / 255.0
        expected = tf.nn.softmax(full(pixels)).numpy()[0]
        assert result.class_name == manifest.class_names[result.class_id]
        assert result.probability == pytest.approx(float(result.probabilities.max()))
        assert result.device_ms > 0 and result.network_ms > 0
        if variant == "float32":
            np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
            assert result.bytes_sent == 4 * int(np.prod(manifest.activation_shape))
        else:
            assert result.bytes_sent == int(np.prod(manifest.activation_shape))  # int8 travels as int8


def test_preprocessing_gives_the_keras_client_activations(exported, trained_dir):
    """Image files -> edge preprocessing -> LiteRT equals the training pipeline -> Keras client."""
    export_dir, manifest = exported
    client = EdgeClient(_tflite(export_dir, "float32"), server="127.0.0.1:1")
    keras_client = models.split_halves(keras.models.load_model(os.path.join(trained_dir, "model.keras"),
                                                               compile=False)).client
    raw = np.stack([data.read_pgm(path)[..., np.newaxis] for path in FACES])
    trained_input = data.make_pipeline(tf.data.Dataset.from_tensor_slices((raw, np.zeros(3, np.int64))),
                                       3, False, 0, manifest.preprocessing.image_size)
    images, _ = next(iter(trained_input))
    expected = keras_client(images).numpy()
    edge_pixels = np.stack([load_image(path, manifest.preprocessing) for path in FACES])
    np.testing.assert_allclose(client.activations(edge_pixels), expected, atol=1e-4)


def test_wire_compatible_with_the_official_messages():
    x = np.arange(24, dtype=np.int8).reshape(2, 3, 4) - 12
    request = transport.GrpcTransport("127.0.0.1:1", MODEL, 3).request(x, "serving_int8")
    official = official_predict.PredictRequest.FromString(request.SerializeToString())
    assert official.model_spec.name == MODEL and official.model_spec.version.value == 3
    assert official.model_spec.signature_name == "serving_int8"
    assert list(official.output_filter) == ["probabilities"]
    np.testing.assert_array_equal(tf.make_ndarray(official.inputs["activations"]), x)
    assert tf.make_ndarray(official.inputs["activations"]).dtype == np.int8
    assert official.SerializeToString() == request.SerializeToString()

    response = official_predict.PredictResponse()
    response.model_spec.name = MODEL
    probabilities = np.random.default_rng(0).uniform(size=(2, 5)).astype(np.float32)
    response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities))
    response.outputs["class_ids"].CopyFrom(tf.make_tensor_proto(np.array([1, 4], np.int64)))
    ours = edge_predict.PredictResponse.FromString(response.SerializeToString())
    np.testing.assert_array_equal(transport.from_tensor_proto(ours.outputs["probabilities"]), probabilities)
    np.testing.assert_array_equal(transport.from_tensor_proto(ours.outputs["class_ids"]), [1, 4])
    # Values in float_val (not tensor_content), as other servers may send them.
    small = official_predict.PredictResponse()
    small.outputs["p"].CopyFrom(tf.make_tensor_proto([0.25, 0.75], dtype=tf.float32))
    small.outputs["p"].ClearField("tensor_content")
    small.outputs["p"].float_val.extend([0.25, 0.75])
    np.testing.assert_array_equal(transport.from_tensor_proto(
        edge_predict.PredictResponse.FromString(small.SerializeToString()).outputs["p"]), [0.25, 0.75])


def test_only_activations_leave_the_device(exported):
    export_dir, manifest = exported
    capture = Capture()
    captured_rest, captured_grpc = capture.rest, capture.grpc
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)}, **capture.server_hooks())
    sent = {variant: ClientRunner.from_file(_tflite(export_dir, variant)).send(
        load_image(FACES[0], manifest.preprocessing)[np.newaxis]) for variant in ("float32", "int8")}
    try:
        for variant in ("float32", "int8"):
            EdgeClient(_tflite(export_dir, variant), server=server.rest).classify(FACES[0])
            EdgeClient(_tflite(export_dir, variant), server=server.grpc, transport="grpc").classify(FACES[0])
    finally:
        server.stop()
    assert len(captured_rest) == 2 and len(captured_grpc) == 2
    shape = manifest.activation_shape
    # Each request holds the signature name and the client's activations, and nothing else: every number
    # in the REST body is an activation value; the gRPC request is the int8/float tensor plus a few bytes.
    for body, variant in zip(captured_rest, ("float32", "int8")):
        request = json.loads(body)
        assert set(request) == {"signature_name", "instances"}
        activations = np.asarray(request["instances"])
        assert activations.shape == (1, *shape)
        np.testing.assert_allclose(activations, sent[variant], rtol=1e-6)
        values = body.replace(request["signature_name"].encode(), b"")
        numbers = re.findall(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", values)
        assert len(numbers) == activations.size
    for request, variant in zip(captured_grpc, ("float32", "int8")):
        assert list(request.inputs) == ["activations"]
        tensor = tf.make_ndarray(request.inputs["activations"])
        assert tensor.shape == (1, *shape) and tensor.dtype == sent[variant].dtype
        np.testing.assert_array_equal(tensor, sent[variant])
        assert len(request.SerializeToString()) <= tensor.nbytes + 200


class _FaultyServer:
    """An HTTP server on loopback that answers predict with a fixed status, or slowly; counts requests."""

    def __init__(self, status=200, delay=0.0):
        self.count = 0
        self.port = free_ports(1)[0]

        async def predict(request):
            self.count += 1
            await asyncio.sleep(delay)
            return web.json_response({"error": f"status {status}"}, status=status)

        app = web.Application()
        app.router.add_post(r"/v1/models/{name}/versions/{version}:predict", predict)
        ready = threading.Event()

        def run():
            async def main():
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                self.loop = asyncio.get_running_loop()
                self.stop_event = asyncio.Event()
                ready.set()
                await self.stop_event.wait()
                await runner.cleanup()
            asyncio.run(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


@pytest.mark.parametrize("status, retried", [(400, False), (404, False), (500, False), (503, True)])
def test_http_errors_retry_only_transient_ones(exported, status, retried):
    export_dir, _ = exported
    server = _FaultyServer(status=status)
    try:
        client = EdgeClient(_tflite(export_dir, "int8"), server=f"127.0.0.1:{server.port}", retries=2)
        with pytest.raises(EdgeError, match=f"server answered {status}"):
            client.classify(FACES[0])
        assert server.count == (3 if retried else 1)
    finally:
        server.stop()


def test_timeouts_and_a_server_that_is_down_fail_fast(exported):
    export_dir, _ = exported
    slow = _FaultyServer(delay=5.0)
    try:
        client = EdgeClient(_tflite(export_dir, "int8"), server=f"127.0.0.1:{slow.port}", timeout=0.3, retries=1)
        start = time.time()
        with pytest.raises(EdgeError, match="did not answer within 0.3 s.*gave up after 2 attempts"):
            client.classify(FACES[0])
        assert time.time() - start < 4
    finally:
        slow.stop()
    down = f"127.0.0.1:{free_ports(1)[0]}"
    for name in ("rest", "grpc"):
        client = EdgeClient(_tflite(export_dir, "int8"), server=down, transport=name, timeout=2, retries=1)
        start = time.time()
        with pytest.raises(EdgeError, match="gave up after 2 attempts"):
            client.classify(FACES[0])
        assert time.time() - start < 10


def test_tls_rest_and_mutual_tls_grpc(exported, certificates):
    import ssl

    from serving.server import read_ssl_config

    export_dir, _ = exported
    folder = certificates
    ssl_config = folder / "ssl.config"
    ssl_config.write_text(f'server_key: {json.dumps((folder / "server.key").read_text())}\n'
                          f'server_cert: {json.dumps((folder / "server.pem").read_text())}\n'
                          f'custom_ca: {json.dumps((folder / "ca.pem").read_text())}\n'
                          'client_verify: true\n')
    rest_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    rest_context.load_cert_chain(folder / "server.pem", folder / "server.key")
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)},
                         grpc_credentials=read_ssl_config(str(ssl_config)), rest_ssl_context=rest_context)
    tls = TlsFiles(str(folder / "ca.pem"), str(folder / "client.pem"), str(folder / "client.key"))
    try:
        rest = EdgeClient(_tflite(export_dir, "int8"), server=server.rest, tls=TlsFiles(str(folder / "ca.pem")))
        assert rest.transport.url.startswith("https://")
        assert rest.classify(FACES[0]).class_name
        secure = EdgeClient(_tflite(export_dir, "int8"), server=server.grpc, transport="grpc", tls=tls)
        assert secure.classify(FACES[0]).class_name
        # Without the client certificate the server refuses; without the CA the client refuses.
        no_client_cert = EdgeClient(_tflite(export_dir, "int8"), server=server.grpc, transport="grpc",
                                    tls=TlsFiles(str(folder / "ca.pem")), retries=0, timeout=5)
        with pytest.raises(EdgeError):
            no_client_cert.classify(FACES[0])
        plain = EdgeClient(_tflite(export_dir, "int8"), server=f"https://{server.rest}", retries=0, timeout=5)
        with pytest.raises(EdgeError, match="TLS"):
            plain.classify(FACES[0])
    finally:
        server.stop()


def _run_edge_cli(args):
    """The edge command in a process where importing TensorFlow fails."""
    code = ("import sys, runpy; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
            f"sys.argv = ['edge.client'] + {list(args)!r}; runpy.run_module('edge.client', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_cli_without_tensorflow(served):
    server, export_dir, manifest = served
    for variant, transport_name, address in (("int8", "grpc", server.grpc), ("float16", "rest", server.rest)):
        result = _run_edge_cli(["--tflite", _tflite(export_dir, variant), "--server", address,
                                "--transport", transport_name, FACES[0], os.path.join(ORL, "s2")])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len([line for line in lines if ".pgm: " in line]) == 11
        assert "device" in lines[0] and "network+server" in lines[0]
        assert lines[-2].startswith(f"11 images via {transport_name} ({variant} client)")
        assert lines[-1].startswith("no device noise: one request may reveal up to ")  # NoPeek alone: no bound
    result = _run_edge_cli(["--tflite", _tflite(export_dir, "int8"), "--server", server.rest, "/no/such.png"])
    assert result.returncode == 1 and result.stderr.strip() == "error: /no/such.png: no such file or folder"


def test_a_bottleneck_client_sends_its_few_channels_end_to_end(tmp_path):
    """--bottleneck=4: the manifest's activations have 4 channels, and the edge client classifies through it."""
    from export import export
    from nopeek_tf import config as config_lib
    from nopeek_tf import training

    model_dir = str(tmp_path / "run")
    metrics = training.train_and_evaluate(config_lib.TrainConfig(
        dataset="orl_faces", image_size=(28, 23), bottleneck=4, epochs=1, batch_size=16, dcor_batch_size=50,
        verbose=0), model_dir)
    assert metrics["activation_shape"] == [7, 5, 4] and metrics["activation_bytes_int8"] == 7 * 5 * 4
    assert 0 < metrics["client_flops_share"] < 1
    export_dir = str(tmp_path / "export")
    manifest = export.export_model(export.ExportConfig(model_dir=model_dir, export_dir=export_dir,
                                                       variants=("float32", "int8"), parity_images=20,
                                                       force=True),  # one brief epoch: the wire is tested
                                   log=lambda *_: None)
    assert manifest.activation_shape == [7, 5, 4]
    assert manifest.clients["int8"].output.bytes_per_sample == 140  # against 644 raw bytes (28x23)
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)})
    try:
        for variant, transport_name, address in (("int8", "grpc", server.grpc), ("float32", "rest", server.rest)):
            result = EdgeClient(_tflite(export_dir, variant), server=address, transport=transport_name).classify(
                FACES[0])
            assert result.bytes_sent == 140 * (1 if variant == "int8" else 4)
            assert 0 <= result.class_id < 40 and result.probabilities.sum() == pytest.approx(1, abs=1e-4)
    finally:
        server.stop()
