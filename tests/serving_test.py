"""The local server against TF Serving's protocol: REST as documented, gRPC with the official stubs."""

import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from tests.conftest import REPO_ROOT
from tests.local_server import LocalServer

MODEL = "nopeek_orl_faces"


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """A server over a private copy of the exported versions (tests add versions to it)."""
    export_dir, manifest = exported
    base = str(tmp_path_factory.mktemp("serving") / MODEL)
    shutil.copytree(os.path.join(export_dir, "serving", MODEL), base)
    server = LocalServer({MODEL: base}, max_body_bytes=2 * 1024 * 1024, poll_seconds=0.2)
    yield server, manifest, base
    server.stop()


def _activations(manifest, count=2, seed=0):
    shape = manifest.activation_shape
    return np.random.default_rng(seed).uniform(0, 1, (count, *shape)).astype(np.float32)


def _url(server, path):
    return f"http://{server.rest}{path}"


def _reference(base, activations, signature="serving_default", version="1"):
    module = tf.saved_model.load(os.path.join(base, version))
    return {k: v.numpy() for k, v in module.signatures[signature](activations=tf.constant(activations)).items()}


def test_rest_predict_row_format(served):
    server, manifest, base = served
    x = _activations(manifest)
    body = {"signature_name": "serving_default", "instances": x.tolist()}
    answer = requests.post(_url(server, f"/v1/models/{MODEL}:predict"), json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    expected = _reference(base, x)
    assert len(predictions) == 2 and set(predictions[0]) == {"probabilities", "class_ids", "logits"}
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], atol=1e-6)
    assert [p["class_ids"] for p in predictions] == expected["class_ids"].tolist()
    # Named inputs per instance, as TF Serving's documentation also writes them.
    named = {"instances": [{"activations": row} for row in x.tolist()]}
    answer = requests.post(_url(server, f"/v1/models/{MODEL}/versions/1:predict"), json=named, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2


def test_rest_predict_columnar_and_int8(served):
    server, manifest, base = served
    x = _activations(manifest)
    answer = requests.post(_url(server, f"/v1/models/{MODEL}:predict"), json={"inputs": {"activations": x.tolist()}},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"]["logits"], _reference(base, x)["logits"], atol=1e-5)
    q = np.random.default_rng(1).integers(-128, 128, (1, *manifest.activation_shape)).astype(np.int8)
    answer = requests.post(_url(server, f"/v1/models/{MODEL}:predict"),
                           json={"signature_name": "serving_int8", "inputs": q.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"]["logits"],
                               _reference(base, q, "serving_int8")["logits"], atol=1e-5)


@pytest.mark.parametrize("path, body, status, message", [
    (f"/v1/models/{MODEL}:predict", "not json", 400, "not valid JSON"),
    (f"/v1/models/{MODEL}:predict", {"instances": [[1, 2]]}, 400, "has shape [1, 2]"),
    (f"/v1/models/{MODEL}:predict", {"instances": [], "inputs": []}, 400, "exactly one of"),
    (f"/v1/models/{MODEL}:predict", {"inputs": {"pixels": [1]}}, 400, "unknown input names"),
    (f"/v1/models/{MODEL}:predict", {"signature_name": "nope", "inputs": [1]}, 400, "\"nope\" not found"),
    (f"/v1/models/{MODEL}/labels/stable:predict", {"inputs": [1]}, 400, "Unrecognized servable version label"),
    (f"/v1/models/{MODEL}:predict", {"signature_name": "serving_int8", "inputs": [[300]]}, 400, "outside the range"),
    ("/v1/models/unknown:predict", {"inputs": [1]}, 404, "Servable not found"),
    (f"/v1/models/{MODEL}/versions/99:predict", {"inputs": [1]}, 404, "Specific(nopeek_orl_faces, 99)"),
])
def test_rest_errors_are_json_with_status_and_the_server_keeps_serving(served, path, body, status, message):
    server, manifest, _ = served
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    answer = requests.post(_url(server, path), timeout=30, **kwargs)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    ok = requests.post(_url(server, f"/v1/models/{MODEL}:predict"),
                       json={"instances": _activations(manifest, 1).tolist()}, timeout=30)
    assert ok.status_code == 200


def test_rest_body_limit(served):
    server, _, _ = served
    answer = requests.post(_url(server, f"/v1/models/{MODEL}:predict"), data=b"[" + b"0," * 2_000_000 + b"0]",
                           timeout=30)
    assert answer.status_code == 413 and "larger than the limit" in answer.json()["error"]


def test_rest_status_and_metadata(served):
    server, manifest, _ = served
    status = requests.get(_url(server, f"/v1/models/{MODEL}/versions/1"), timeout=30).json()
    assert status["model_version_status"][0] == {"version": "1", "state": "AVAILABLE",
                                                 "status": {"error_code": "OK", "error_message": ""}}
    metadata = requests.get(_url(server, f"/v1/models/{MODEL}/versions/1/metadata"), timeout=30).json()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in signature["inputs"]["activations"]["tensor_shape"]["dim"]]
    assert dims == [-1, *manifest.activation_shape]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert requests.get(_url(server, "/v1/models/unknown"), timeout=30).status_code == 404


def test_grpc_predict_and_metadata_with_the_official_stubs(served):
    server, manifest, base = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
    x = _activations(manifest)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["activations"].CopyFrom(tf.make_tensor_proto(x))
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               _reference(base, x)["probabilities"], atol=1e-6)
    assert response.model_spec.name == MODEL and response.model_spec.version.value >= 1

    q = np.zeros((1, *manifest.activation_shape), np.int8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_int8"
    request.model_spec.version.value = 1
    request.inputs["activations"].CopyFrom(tf.make_tensor_proto(q))
    assert tf.make_ndarray(stub.Predict(request, timeout=30).outputs["class_ids"]).shape == (1,)

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = MODEL
    meta = stub.GetModelMetadata(meta_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "serving_int8"} <= set(signatures.signature_def)

    request.model_spec.name = "unknown"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = MODEL
    request.inputs["activations"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 3), np.int8)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method, path, message", [
    ("POST", f"/v1/models/{MODEL}:predicts", f"Malformed request: POST /v1/models/{MODEL}:predicts"),
    ("GET", f"/v1/models/{MODEL}/versions/one", "Malformed request: GET"),
    ("GET", f"/v1/models/{MODEL}:predict", "Malformed request: GET"),
    ("POST", "/v1/models:predict", "Malformed request: POST /v1/models:predict"),
    ("PUT", f"/v1/models/{MODEL}", "Malformed request: PUT"),
    ("GET", "/v1/models", "Missing model name in request."),
    ("POST", f"/v1/models/{MODEL}/versions/1/labels/stable:predict", "Malformed request"),
    ("POST", f"/v1/models/{MODEL}:classify", "Expected classify signature method_name"),
])
def test_rest_urls_tf_serving_does_not_route_answer_400_json(served, method, path, message):
    server, manifest, _ = served
    answer = requests.request(method, _url(server, path), json={"instances": _activations(manifest, 1).tolist()},
                              timeout=30)
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert answer.headers["Content-Type"].startswith("application/json")
    assert message in answer.json()["error"]
    # Routes match case-insensitively, as TF Serving's.
    assert requests.get(_url(server, f"/V1/MODELS/{MODEL}"), timeout=30).status_code == 200


def test_grpc_unknown_signature_is_failed_precondition_and_rest_400(served):
    server, manifest, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_nope"
    request.inputs["activations"].CopyFrom(tf.make_tensor_proto(_activations(manifest, 1)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "serving_nope" in error.value.details()


def test_grpc_get_model_status_with_the_official_stub(served):
    server, _, _ = served
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = stub.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    assert response.model_version_status[0].status.error_code == 0
    request.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "version 7 of model" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_new_version_replaces_the_served_one_and_the_old_one_ends(served):
    """TF Serving's default policy: the latest version only; the older one unloads (state END)."""
    server, manifest, base = served
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, ".tmp-2"))
    os.rename(os.path.join(base, ".tmp-2"), os.path.join(base, "2"))  # as the exporter does: atomically
    expected = [{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
                {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}}]
    deadline = time.time() + 30
    while time.time() < deadline:
        status = requests.get(_url(server, f"/v1/models/{MODEL}"), timeout=30).json()["model_version_status"]
        if status == expected:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"version 2 did not replace version 1: {status}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["activations"].CopyFrom(tf.make_tensor_proto(_activations(manifest, 1)))
    assert stub.Predict(request, timeout=30).model_spec.version.value == 2
    request.model_spec.version.value = 1
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_bad_flags_give_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "serving.server", f"--model_base_path={tmp_path}/missing",
                             "--model_name=m"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "is not a folder" in lines[0], result.stderr


def test_cli_serves_the_models_config(exported, tmp_path):
    """python -m serving.server with --model_config_file, as tensorflow_model_server takes it."""
    export_dir, manifest = exported
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{MODEL}" '
                      f'base_path: "{os.path.join(export_dir, "serving", MODEL)}" model_platform: "tensorflow" }} }}')
    from nopeek_tf.training.distribute import free_ports
    rest_port, grpc_port = free_ports(2)
    process = subprocess.Popen([sys.executable, "-m", "serving.server", f"--model_config_file={config}",
                                f"--rest_api_port={rest_port}", f"--port={grpc_port}"], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                answer = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}", timeout=5)
                break
            except requests.exceptions.ConnectionError:
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.2)
        assert answer.status_code == 200
    finally:
        process.terminate()
        stdout, _ = process.communicate(timeout=60)
    assert f"serving {MODEL} version 1" in stdout and "127.0.0.1" in stdout


def _deployment_flags():
    """{flag: argument} of tensorflow_model_server in serving/docker-compose.yml and serving/kubernetes.yaml."""
    flags = {}
    for name in ("docker-compose.yml", "kubernetes.yaml"):
        with open(os.path.join(REPO_ROOT, "serving", name)) as f:
            for line in f:
                match = re.match(r"\s*- (--[a-z_]+)(=\S+)?\s*(#.*)?$", line)
                if match:
                    flags[match.group(1)] = match.group(1) + (match.group(2) or "")
    return flags


def test_cli_takes_the_deployment_files_flags_and_drains_on_sigterm(exported, tmp_path):
    """The flags the repository deploys TF Serving with start the local server; SIGTERM lets a request finish."""
    export_dir, manifest = exported
    models = tmp_path / "models"  # what the deployments mount at /models
    shutil.copytree(os.path.join(export_dir, "serving"), models)
    config = (models / "models.config").read_text().replace("/models/", f"{models}/")
    (models / "models.config").write_text(config)
    # A long batch timeout keeps one request in flight when SIGTERM comes.
    (models / "batching_parameters.txt").write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 3000000 }")
    flags = _deployment_flags()
    assert {"--model_config_file", "--enable_batching", "--batching_parameters_file",
            "--file_system_poll_wait_seconds", "--model_config_file_poll_wait_seconds"} <= set(flags)
    from nopeek_tf.training.distribute import free_ports
    rest_port, grpc_port = free_ports(2)
    flags["--port"], flags["--rest_api_port"] = f"--port={grpc_port}", f"--rest_api_port={rest_port}"
    args = [flag.replace("=/models/", f"={models}/") for flag in flags.values()]
    process = subprocess.Popen([sys.executable, "-m", "serving.server", *args], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                assert requests.get(url, timeout=5).status_code == 200
                break
            except requests.exceptions.ConnectionError:
                assert process.poll() is None and time.time() < deadline, process.communicate()[1]
                time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.time()
            in_flight = pool.submit(requests.post, url + ":predict",
                                    json={"instances": _activations(manifest, 1).tolist()}, timeout=60)
            time.sleep(1.0)
            assert not in_flight.done()
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1, answer.text
        assert time.time() - started >= 2.5  # it waited out its batch instead of being cut off
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, timeout=5)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "batching up to 64 rows" in stdout and "SIGTERM: no new requests" in stdout and "stopped" in stdout
