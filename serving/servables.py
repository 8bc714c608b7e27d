"""The servables of the local server: SavedModel versions under a model base path.

A base path holds numeric version folders (``base/1/saved_model.pb``), as TF
Serving reads them. :class:`ModelManager` loads every version it finds, serves
the highest by default, and picks up new versions while it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_SIGNATURE = "serving_default"


class ServingError(Exception):
    """An error a client caused or must hear about: carries its HTTP status and gRPC code name."""

    def __init__(self, message: str, http_status: int = 400, grpc_code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


def not_found(message: str) -> ServingError:
    return ServingError(message, 404, "NOT_FOUND")


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version."""

    name: str
    version: int
    path: str
    module: Any
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]

    def signature(self, name: str | None):
        """The concrete function of signature ``name`` (default serving_default)."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.module.signatures:
            raise ServingError(f"Serving signature name: \"{name}\" not found in signature def "
                               f"(available: {', '.join(sorted(self.module.signatures))})")
        return self.module.signatures[name]

    def input_specs(self, signature_name: str | None) -> dict[str, tf.TensorSpec]:
        """The signature's inputs by name."""
        return dict(self.signature(signature_name).structured_input_signature[1])

    def predict(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on named numpy inputs; ServingError for wrong names, dtypes or shapes."""
        function = self.signature(signature_name)
        specs = self.input_specs(signature_name)
        if set(inputs) != set(specs):
            raise ServingError(f"input names {sorted(inputs)} do not match the signature's inputs {sorted(specs)}")
        tensors = {}
        for key, spec in specs.items():
            value = inputs[key]
            if not spec.shape.is_compatible_with(value.shape):
                raise ServingError(f"input '{key}' has shape {list(value.shape)}, the signature expects "
                                   f"{spec.shape.as_list()} (None: any size)")
            tensors[key] = tf.constant(value, dtype=spec.dtype)
        outputs = function(**tensors)
        return {key: value.numpy() for key, value in outputs.items()}


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the "serve" meta graph in ``path/saved_model.pb``."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return {key: value for key, value in meta_graph.signature_def.items()
                    if not key.startswith("__")}
    return {}


def parse_models_config(path: str) -> dict[str, str]:
    """{model name: base path} from a ``model_config_list`` text proto (as --model_config_file)."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    folder = os.path.dirname(os.path.abspath(path))
    return {model.name: os.path.join(folder, model.base_path) if not os.path.isabs(model.base_path)
            else model.base_path for model in config.model_config_list.config}


class ModelManager:
    """Loads and serves the versions of one or more models; thread-safe.

    Args:
      base_paths: {model name: base path}.
    """

    def __init__(self, base_paths: dict[str, str]):
        self.base_paths = dict(base_paths)
        self._versions: dict[str, dict[int, LoadedVersion]] = {name: {} for name in base_paths}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[tuple[str, int]]:
        """Loads versions that appeared since the last call; returns them as (name, version)."""
        loaded = []
        for name, base in self.base_paths.items():
            if not os.path.isdir(base):
                continue
            for entry in sorted(os.listdir(base)):
                path = os.path.join(base, entry)
                if not entry.isdigit() or int(entry) in self._versions[name]:
                    continue
                if not os.path.exists(os.path.join(path, "saved_model.pb")):
                    continue
                try:
                    version = LoadedVersion(name, int(entry), path, tf.saved_model.load(path),
                                            read_signature_defs(path))
                except Exception as error:  # a broken version must not stop the others
                    logging.error("could not load %s version %s: %s", name, entry, error)
                    continue
                with self._lock:
                    self._versions[name][int(entry)] = version
                loaded.append((name, int(entry)))
        return loaded

    def start_polling(self, seconds: float) -> None:
        """Refreshes every ``seconds`` in a background thread (as TF Serving's file system poll)."""
        def poll():
            while not self._stop.wait(seconds):
                for name, version in self.refresh():
                    logging.warning("loaded %s version %d", name, version)
        self._thread = threading.Thread(target=poll, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def versions(self, name: str) -> list[int]:
        """Loaded versions of ``name``, ascending; ServingError if the model is unknown."""
        with self._lock:
            if name not in self._versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            return sorted(self._versions[name])

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The requested version, or the highest; ServingError (404) if it is not loaded."""
        with self._lock:
            versions = self._versions.get(name)
            if not versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return versions[version]
