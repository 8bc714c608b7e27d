"""TF Serving's REST API on aiohttp: predict (row and columnar), model status and metadata.

Routes, as TF Serving documents and matches them (case-insensitive):

  POST /v1/models/NAME[/versions/N | /labels/L]:predict   {"signature_name": ..., "instances": [...]}
                                                          or {"signature_name": ..., "inputs": ...}
  GET  /v1/models/NAME[/versions/N | /labels/L]           model status (every version seen)
  GET  /v1/models/NAME[/versions/N | /labels/L]/metadata  signature defs

Errors are ``{"error": "..."}`` with TF Serving's status (a URL it does not
route is 400 "Malformed request: METHOD PATH"); the server keeps serving.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from .batching import Predictor
from .servables import ModelManager, ServingError


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _as_array(value: Any, spec, key: str) -> np.ndarray:
    dtype = spec.dtype.as_numpy_dtype
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise ServingError(f"input '{key}' is not a rectangular array") from None
    if array.dtype == object:
        raise ServingError(f"input '{key}' is not a rectangular array of numbers")
    if np.issubdtype(dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise ServingError(f"input '{key}' must hold integers ({spec.dtype.name})")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ServingError(f"input '{key}' has values outside the range of {spec.dtype.name}")
    elif not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ServingError(f"input '{key}' must hold numbers")
    return array.astype(dtype)


def parse_predict_body(body: Any, specs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """Turns a predict request body into named arrays; returns (inputs, row_format)."""
    if not isinstance(body, dict):
        raise ServingError("the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise ServingError("the request must have exactly one of \"instances\" (row format) "
                           "or \"inputs\" (columnar format)")
    names = sorted(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("\"instances\" must be a non-empty list")
        if all(isinstance(instance, dict) for instance in instances):
            columns = {}
            for key in names:
                if any(key not in instance for instance in instances):
                    raise ServingError(f"every instance needs the input '{key}'")
                columns[key] = [instance[key] for instance in instances]
            extra = {k for instance in instances for k in instance} - set(names)
            if extra:
                raise ServingError(f"unknown input names {sorted(extra)}; the signature takes {names}")
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise ServingError(f"the signature takes several inputs {names}: give each instance as an object")
        return {key: _as_array(value, specs[key], key) for key, value in columns.items()}, True
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        extra = set(inputs) - set(names)
        if extra:
            raise ServingError(f"unknown input names {sorted(extra)}; the signature takes {names}")
        return {key: _as_array(inputs.get(key), specs[key], key) for key in names}, False
    if len(names) != 1:
        raise ServingError(f"the signature takes several inputs {names}: give \"inputs\" as an object")
    return {names[0]: _as_array(inputs, specs[names[0]], names[0])}, False


def format_predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's answer: "predictions" per instance (row) or "outputs" (columnar)."""
    if row_format:
        if len(outputs) == 1:
            (value,) = outputs.values()
            return {"predictions": value.tolist()}
        count = len(next(iter(outputs.values())))
        return {"predictions": [{key: value[i].tolist() for key, value in outputs.items()} for i in range(count)]}
    if len(outputs) == 1:
        (value,) = outputs.values()
        return {"outputs": value.tolist()}
    return {"outputs": {key: value.tolist() for key, value in outputs.items()}}


# TF Serving's routes (model_servers/http_rest_api_util.cc), matched whole and case-insensitively.
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                          re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                         re.IGNORECASE)


def make_app(manager: ModelManager, max_body_bytes: int, middlewares=(),
             predictor: Predictor | None = None) -> web.Application:
    """The aiohttp application serving ``manager``'s models (batched if ``predictor`` batches)."""
    predictor = predictor or Predictor()

    async def predict(request: web.Request, name: str, version: int | None, label: str | None,
                      method: str) -> web.Response:
        if method.lower() != "predict":
            # As TF Serving answers :classify/:regress on a model whose signatures are all predict ones.
            raise ServingError(f"Expected {method.lower()} signature method_name to be "
                               f"tensorflow/serving/{method.lower()}. Was: tensorflow/serving/predict")
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            raise ServingError(f"the request body is not valid JSON: {error}") from None
        loaded = manager.get(name, version, label)
        signature_name = body.get("signature_name") if isinstance(body, dict) else None
        inputs, row_format = parse_predict_body(body, loaded.input_specs(signature_name))
        outputs = await predictor.predict(loaded, signature_name, inputs)
        return web.json_response(format_predict_response(outputs, row_format))

    def status(name: str, version: int | None) -> web.Response:
        return web.json_response({"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}
            for v, state, error in manager.status(name, version)]})

    def metadata(name: str, version: int | None, label: str | None) -> web.Response:
        loaded = manager.get(name, version, label)
        signature_defs = {key: json_format.MessageToDict(value, preserving_proto_field_name=True)
                          for key, value in loaded.signature_defs.items()}
        return web.json_response({
            "model_spec": {"name": loaded.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}},
        })

    async def dispatch(request: web.Request) -> web.Response:
        """Every /v1/ request, routed as TF Serving routes it; anything else is a 400 "Malformed request"."""
        path = request.path
        if not path.lower().startswith("/v1/"):
            return _error(f"not found: {path} (TF Serving's REST API is under /v1/)", 404)
        try:
            match = (PREDICT_PATH.fullmatch(path) if request.method == "POST" else
                     STATUS_PATH.fullmatch(path) if request.method == "GET" else None)
            if match is None:
                raise ServingError(f"Malformed request: {request.method} {path}")
            name, version_text, label, last = match.groups()
            name = name or ""
            version = int(version_text) if version_text else None
            if request.method == "POST":
                return await predict(request, name, version, label, last)
            if not name:
                raise ServingError("Missing model name in request.")
            if last:
                return metadata(name, version, label)
            # TF Serving's GetModelStatus answers every version when the request names a label.
            return status(name, version)
        except ServingError as error:
            return _error(str(error), error.http_status)

    @web.middleware
    async def errors_as_json(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status >= 400:
                return _error(error.reason if error.status != 413 else
                              f"the request body is larger than the limit of {max_body_bytes} bytes", error.status)
            raise

    app = web.Application(client_max_size=max_body_bytes, middlewares=[errors_as_json, *middlewares])
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
