"""TF Serving's REST API on aiohttp: predict (row and columnar), model status and metadata.

Routes, as TF Serving documents them:

  POST /v1/models/NAME[/versions/N]:predict   {"signature_name": ..., "instances": [...]}
                                              or {"signature_name": ..., "inputs": ...}
  GET  /v1/models/NAME[/versions/N]            model status
  GET  /v1/models/NAME[/versions/N]/metadata   signature defs

Errors are ``{"error": "..."}`` with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from serving.servables import ModelManager, ServingError

NAME = r"{name:[^/:]+}"
VERSION = r"{version:\d+}"


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _version(request: web.Request) -> int | None:
    version = request.match_info.get("version")
    return int(version) if version is not None else None


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


def make_app(manager: ModelManager, max_body_bytes: int, middlewares=()) -> web.Application:
    """The aiohttp application serving ``manager``'s models."""

    async def predict(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            return _error(f"the request body is not valid JSON: {error}", 400)
        try:
            loaded = manager.get(request.match_info["name"], _version(request))
            signature_name = body.get("signature_name") if isinstance(body, dict) else None
            inputs, row_format = parse_predict_body(body, loaded.input_specs(signature_name))
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(None, loaded.predict, signature_name, inputs)
        except ServingError as error:
            return _error(str(error), error.http_status)
        return web.json_response(format_predict_response(outputs, row_format))

    async def status(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            version = _version(request)
            versions = [manager.get(name, version).version] if version is not None else manager.versions(name)
        except ServingError as error:
            return _error(str(error), error.http_status)
        return web.json_response({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in versions]})

    async def metadata(request: web.Request) -> web.Response:
        try:
            loaded = manager.get(request.match_info["name"], _version(request))
        except ServingError as error:
            return _error(str(error), error.http_status)
        signature_defs = {key: json_format.MessageToDict(value, preserving_proto_field_name=True)
                          for key, value in loaded.signature_defs.items()}
        return web.json_response({
            "model_spec": {"name": loaded.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}},
        })

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
    for prefix in (f"/v1/models/{NAME}", f"/v1/models/{NAME}/versions/{VERSION}"):
        app.router.add_post(prefix + ":predict", predict)
        app.router.add_get(prefix, status)
        app.router.add_get(prefix + "/metadata", metadata)
    return app
