"""Sends activations to TF Serving (REST or gRPC) from a device, without TensorFlow.

Both transports send one tensor, ``activations``, to the signature the
manifest names, and return the server's class probabilities. Every call has a
timeout; transient failures (server unreachable, timeout, 502/503/504, gRPC
UNAVAILABLE/DEADLINE_EXCEEDED) are retried a bounded number of times with
exponential backoff; anything else fails at once with one clear message.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from nopeek_tf.device.manifest import ACTIVATIONS_INPUT

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
TRANSIENT_HTTP_STATUSES = (502, 503, 504)


class EdgeError(Exception):
    """A failure the user must hear about, in one line."""


class TransientError(EdgeError):
    """A failure that may pass: worth a retry."""


@dataclasses.dataclass
class TlsFiles:
    """PEM files for TLS: the CA that signed the server, and optionally a client certificate."""

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)


def with_retries(call, retries: int, backoff_seconds: float = 0.2):
    """Runs ``call()``; retries TransientError up to ``retries`` times, doubling the wait."""
    for attempt in range(retries + 1):
        try:
            return call()
        except TransientError as error:
            if attempt == retries:
                raise EdgeError(f"{error} (gave up after {retries + 1} attempts)") from None
            time.sleep(backoff_seconds * 2 ** attempt)


class RestTransport:
    """``POST /v1/models/NAME[/versions/N]:predict`` with ``instances`` (or ``inputs``) JSON."""

    def __init__(self, server: str, model_name: str, version: int | None = None, tls: TlsFiles | None = None,
                 timeout: float = 10.0, columnar: bool = False):
        import requests

        self.tls = tls or TlsFiles()
        if "://" not in server:
            server = ("https://" if self.tls.enabled else "http://") + server
        path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "") + ":predict"
        self.url = server.rstrip("/") + path
        self.timeout = timeout
        self.columnar = columnar
        self.session = requests.Session()
        # Passed with each request: a Session's verify would lose to REQUESTS_CA_BUNDLE in the environment.
        self.verify = (self.tls.ca_file or True) if self.url.startswith("https://") else True
        self.cert = (self.tls.client_cert, self.tls.client_key) if self.tls.client_cert else None

    def request_body(self, activations: np.ndarray, signature_name: str) -> dict:
        key = "inputs" if self.columnar else "instances"
        return {"signature_name": signature_name, key: activations.tolist()}

    def predict(self, activations: np.ndarray, signature_name: str) -> np.ndarray:
        """Class probabilities [N, classes] for a batch of activations."""
        import requests

        try:
            response = self.session.post(self.url, json=self.request_body(activations, signature_name),
                                         timeout=self.timeout, verify=self.verify, cert=self.cert)
        except requests.exceptions.SSLError as error:
            raise EdgeError(f"TLS with {self.url} failed: {error}") from None
        except requests.exceptions.Timeout:
            raise TransientError(f"{self.url} did not answer within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError:
            raise TransientError(f"cannot reach the server at {self.url}") from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text.strip()[:200]
            error_type = TransientError if response.status_code in TRANSIENT_HTTP_STATUSES else EdgeError
            raise error_type(f"server answered {response.status_code}: {message}")
        body = response.json()
        if self.columnar:
            return np.asarray(body["outputs"]["probabilities"], np.float32)
        return np.asarray([row["probabilities"] for row in body["predictions"]], np.float32)


# TensorProto dtype numbers (tensorflow/core/framework/types.proto).
_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
           np.dtype(np.int8): 6, np.dtype(np.int64): 9}
_NUMPY = {number: dtype for dtype, number in _DTYPES.items()}


def to_tensor_proto(array: np.ndarray):
    """A numpy array as an edge TensorProto (raw little-endian bytes in tensor_content)."""
    from .proto import predict_pb2

    array = np.ascontiguousarray(array)
    if array.dtype not in _DTYPES:
        raise EdgeError(f"cannot send a {array.dtype} tensor")
    tensor = predict_pb2.TensorProto(dtype=_DTYPES[array.dtype],
                                     tensor_content=array.astype(array.dtype.newbyteorder("<")).tobytes())
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def from_tensor_proto(tensor) -> np.ndarray:
    """An edge (or TF) TensorProto as a numpy array."""
    if tensor.dtype not in _NUMPY:
        raise EdgeError(f"the server sent a tensor of unsupported dtype {tensor.dtype}")
    dtype = _NUMPY[tensor.dtype]
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype.newbyteorder("<")).astype(dtype)
    else:
        field = {1: "float_val", 2: "double_val", 9: "int64_val"}.get(tensor.dtype, "int_val")
        values = np.asarray(getattr(tensor, field), dtype)
        if values.size == 1 and int(np.prod(shape)) > 1:
            values = np.full(int(np.prod(shape)), values[0], dtype)
    return values.reshape(shape)


class GrpcTransport:
    """``PredictionService/Predict`` with the activations as a TensorProto (int8 stays int8)."""

    TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")

    def __init__(self, server: str, model_name: str, version: int | None = None, tls: TlsFiles | None = None,
                 timeout: float = 10.0):
        import grpc

        from .proto import predict_pb2

        self.server = server.split("://", 1)[-1]
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        tls = tls or TlsFiles()
        if tls.enabled:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls.ca_file),
                private_key=read(tls.client_key) if tls.client_key else None,
                certificate_chain=read(tls.client_cert) if tls.client_cert else None)
            self.channel = grpc.secure_channel(self.server, credentials)
        else:
            self.channel = grpc.insecure_channel(self.server)
        self._predict = self.channel.unary_unary(
            PREDICT_METHOD, request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString)

    def request(self, activations: np.ndarray, signature_name: str):
        from .proto import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version:
            request.model_spec.version.value = self.version
        request.inputs[ACTIVATIONS_INPUT].CopyFrom(to_tensor_proto(activations))
        request.output_filter.append("probabilities")
        return request

    def predict(self, activations: np.ndarray, signature_name: str) -> np.ndarray:
        """Class probabilities [N, classes] for a batch of activations."""
        import grpc

        try:
            response = self._predict(self.request(activations, signature_name), timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code().name if error.code() else "UNKNOWN"
            message = f"gRPC {code} from {self.server}: {error.details()}"
            raise (TransientError if code in self.TRANSIENT_CODES else EdgeError)(message) from None
        return from_tensor_proto(response.outputs["probabilities"]).astype(np.float32)
