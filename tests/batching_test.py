"""Server-side batching (--enable_batching): merged model calls, equal results, a bounded queue."""

import asyncio
import concurrent.futures
import os
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from export.serving_model import BATCHING_PARAMETERS_TEXT
from serving.batching import BatchingParameters, Predictor, read_batching_parameters
from serving.servables import ModelManager, ServingError
from tests.local_server import LocalServer

MODEL = "nopeek_orl_faces"


@pytest.fixture(scope="module")
def servable(exported):
    export_dir, manifest = exported
    manager = ModelManager({MODEL: os.path.join(export_dir, "serving", MODEL)})
    manager.configure(manager.configs)
    return manager.get(MODEL), manifest


def _rows(manifest, count, seed):
    return np.random.default_rng(seed).normal(size=(count, *manifest.activation_shape)).astype(np.float32)


def _predict_all(predictor, servable, requests):
    async def run():
        return await asyncio.gather(*(predictor.predict(servable, None, {"activations": x}) for x in requests),
                                    return_exceptions=True)
    return asyncio.run(run())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(servable):
    loaded, manifest = servable
    requests = [_rows(manifest, 1 + i % 3, seed=i) for i in range(12)]
    predictor = Predictor(BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1))
    answers = _predict_all(predictor, loaded, requests)
    for x, answer in zip(requests, answers):
        np.testing.assert_allclose(answer["logits"], loaded.predict(None, {"activations": x})["logits"],
                                   rtol=1e-5, atol=1e-5)
    calls = sum(predictor.batch_sizes.values())
    assert calls < len(requests) and max(predictor.batch_sizes) <= 8, predictor.batch_sizes
    assert sum(size * count for size, count in predictor.batch_sizes.items()) == sum(len(x) for x in requests)


def test_allowed_batch_sizes_pad_and_results_stay_exact(servable):
    loaded, manifest = servable
    requests = [_rows(manifest, 1, seed=i) for i in range(3)]
    predictor = Predictor(BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                                             allowed_batch_sizes=(4, 8)))
    answers = _predict_all(predictor, loaded, requests)
    assert dict(predictor.batch_sizes) == {4: 1}
    for x, answer in zip(requests, answers):
        assert answer["logits"].shape[0] == 1
        np.testing.assert_allclose(answer["logits"], loaded.predict(None, {"activations": x})["logits"],
                                   rtol=1e-5, atol=1e-5)


def test_a_full_queue_refuses_with_unavailable_and_a_too_large_request_with_invalid_argument(servable):
    loaded, manifest = servable
    predictor = Predictor(BatchingParameters(max_batch_size=2, batch_timeout_micros=10_000, max_enqueued_batches=2,
                                             num_batch_threads=1))
    answers = _predict_all(predictor, loaded, [_rows(manifest, 1, seed=i) for i in range(10)])
    refused = [a for a in answers if isinstance(a, ServingError)]
    assert len(refused) == 6, answers  # room for 2 batches of 2 rows while nothing has run yet
    assert all(a.grpc_code == "UNAVAILABLE" and a.http_status == 503 and "queue" in str(a) for a in refused)
    (too_large,) = _predict_all(predictor, loaded, [_rows(manifest, 3, seed=0)])
    assert isinstance(too_large, ServingError) and too_large.grpc_code == "INVALID_ARGUMENT"
    assert "larger than maximum input batch size 2" in str(too_large)


def test_the_exported_parameters_file_parses_and_bad_ones_name_the_field(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text(BATCHING_PARAMETERS_TEXT)
    parameters = read_batching_parameters(str(path))
    assert (parameters.max_batch_size, parameters.batch_timeout_micros, parameters.max_enqueued_batches,
            parameters.num_batch_threads) == (64, 2000, 100, 2)
    for text, message in [("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 6",
                           "must equal max_batch_size"),
                          ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
                          ("max_batch_sise { value: 8 }", "max_batch_sise")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_batching_parameters(str(path))


def test_grpc_clients_get_the_unbatched_answers_from_a_batching_server(exported, servable):
    export_dir, manifest = exported
    loaded, _ = servable
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)},
                         batching=BatchingParameters(max_batch_size=16, batch_timeout_micros=5000))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))

        def call(seed):
            x = _rows(manifest, 1 + seed % 2, seed)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["activations"].CopyFrom(tf.make_tensor_proto(x))
            return x, tf.make_ndarray(stub.Predict(request, timeout=30).outputs["logits"])

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for x, logits in pool.map(call, range(48)):
                np.testing.assert_allclose(logits, loaded.predict(None, {"activations": x})["logits"],
                                           rtol=1e-5, atol=1e-5)
    finally:
        server.stop()


def test_a_full_queue_answers_503_over_rest_and_unavailable_over_grpc(exported):
    """A 3-row request waits for its batch (4 rows, 2 s timeout, room for 1 batch): a second one finds it full."""
    import requests

    export_dir, manifest = exported
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)},
                         batching=BatchingParameters(max_batch_size=4, batch_timeout_micros=2_000_000,
                                                     max_enqueued_batches=1, num_batch_threads=1))
    url = f"http://{server.rest}/v1/models/{MODEL}:predict"
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(requests.post, url, json={"instances": _rows(manifest, 3, 0).tolist()}, timeout=30)
            time.sleep(0.5)  # it reaches the queue in milliseconds, then waits out its batch's 2 s timeout
            assert not waiting.done()
            full = requests.post(url, json={"instances": _rows(manifest, 3, 1).tolist()}, timeout=30)
            assert full.status_code == 503, full.text
            assert full.json()["error"] == "The batch scheduling queue to which this task was submitted is full"
            stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["activations"].CopyFrom(tf.make_tensor_proto(_rows(manifest, 3, 2)))
            if not waiting.done():
                with pytest.raises(grpc.RpcError) as error:
                    stub.Predict(request, timeout=30)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert waiting.result().status_code == 200 and len(waiting.result().json()["predictions"]) == 3
        assert stub.Predict(request, timeout=30).outputs["logits"].tensor_shape.dim[0].size == 3  # serving on
    finally:
        server.stop()
