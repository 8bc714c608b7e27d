"""The servables of the local server: SavedModel versions under model base paths, as TF Serving manages them.

A base path holds numeric version folders (``base/1/saved_model.pb``). Each
model has a version policy (``model_version_policy`` in models.config: the
latest N, all, or specific versions; TF Serving's default is the latest one)
and optional version labels. :class:`ModelManager` loads the versions the
policy wants, unloads the others once a wanted one serves (their memory is
freed), picks up new versions while it runs, and re-reads models.config when
asked to, as ``--model_config_file_poll_wait_seconds`` does.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_SIGNATURE = "serving_default"
AVAILABLE, LOADING, END = "AVAILABLE", "LOADING", "END"
POLICIES = ("latest", "all", "specific")


class ServingError(Exception):
    """An error a client caused or must hear about: carries its HTTP status and gRPC code name.

    The pairs follow TF Serving's mapping of status codes to HTTP
    (``model_servers/http_server.cc``): INVALID_ARGUMENT and FAILED_PRECONDITION
    400, NOT_FOUND 404, UNAVAILABLE 503.
    """

    def __init__(self, message: str, http_status: int = 400, grpc_code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


def not_found(message: str) -> ServingError:
    return ServingError(message, 404, "NOT_FOUND")


class ModelConfigError(ValueError):
    """A models.config that cannot be served (unknown policy, a label on a version that is not loaded...)."""


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
            # TF Serving's Predict answers FAILED_PRECONDITION here (servables/tensorflow/predict_util.cc).
            raise ServingError(f"Serving signature name: \"{name}\" not found in signature def "
                               f"(available: {', '.join(sorted(self.module.signatures))})",
                               400, "FAILED_PRECONDITION")
        return self.module.signatures[name]

    def input_specs(self, signature_name: str | None) -> dict[str, tf.TensorSpec]:
        """The signature's inputs by name."""
        return dict(self.signature(signature_name).structured_input_signature[1])

    def check_inputs(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named numpy inputs checked against the signature and cast to its dtypes; ServingError if they differ."""
        specs = self.input_specs(signature_name)
        if set(inputs) != set(specs):
            raise ServingError(f"input names {sorted(inputs)} do not match the signature's inputs {sorted(specs)}")
        checked = {}
        for key, spec in specs.items():
            value = np.asarray(inputs[key])
            if not spec.shape.is_compatible_with(value.shape):
                raise ServingError(f"input '{key}' has shape {list(value.shape)}, the signature expects "
                                   f"{spec.shape.as_list()} (None: any size)")
            checked[key] = value.astype(spec.dtype.as_numpy_dtype, copy=False)
        return checked

    def run(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on inputs that passed :meth:`check_inputs`."""
        outputs = self.signature(signature_name)(**{key: tf.constant(value) for key, value in inputs.items()})
        return {key: value.numpy() for key, value in outputs.items()}

    def predict(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks and runs: named numpy inputs to named numpy outputs."""
        return self.run(signature_name, self.check_inputs(signature_name, inputs))


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


def read_text_proto(path: str, message):
    """``message`` filled from the text-format proto file ``path``; ValueError says what is wrong."""
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), message)
    except (OSError, text_format.ParseError) as error:
        raise ValueError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model of models.config: where its versions are, which of them to serve, and its labels.

    Attributes:
      name: the model name clients ask for.
      base_path: the folder of numeric version folders.
      policy: "latest" (the ``num_versions`` highest), "all", or "specific" (``versions``).
      num_versions: how many of the highest versions "latest" serves.
      versions: the versions "specific" serves.
      labels: {label: version}, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def wanted(self, on_disk: list[int]) -> set[int]:
        """The versions the policy serves among those on disk."""
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(on_disk) & set(self.versions)
        return set(sorted(on_disk)[-self.num_versions:])


def parse_models_config(path: str) -> dict[str, ModelConfig]:
    """{model name: ModelConfig} from a ``model_config_list`` text proto (as --model_config_file).

    Raises:
      ModelConfigError: unreadable file, duplicate names, or a policy that serves nothing.
    """
    try:
        config = read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    except ValueError as error:
        raise ModelConfigError(str(error)) from None
    folder = os.path.dirname(os.path.abspath(path))
    models = {}
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ModelConfigError("every config needs a name and a base_path")
        if model.name in models:
            raise ModelConfigError(f"model {model.name} is configured twice")
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        num_versions = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        if kind == "specific" and not policy.specific.versions:
            raise ModelConfigError(f"model {model.name}: a specific version policy needs at least one version")
        base_path = model.base_path if os.path.isabs(model.base_path) else os.path.join(folder, model.base_path)
        models[model.name] = ModelConfig(model.name, base_path, kind, num_versions,
                                         tuple(policy.specific.versions), dict(model.version_labels))
    return models


def single_model_config(name: str, base_path: str) -> dict[str, ModelConfig]:
    """The config of --model_name/--model_base_path: one model, latest version, no labels."""
    return {name: ModelConfig(name, base_path)}


class ModelManager:
    """Loads, serves and unloads the versions of one or more models; thread-safe.

    Args:
      configs: {model name: ModelConfig}; a plain {name: base path} serves each
        model's latest version.
      allow_labels_for_unavailable: let a label point at a version that is not
        loaded (TF Serving's --allow_version_labels_for_unavailable_models).
    """

    def __init__(self, configs: dict[str, ModelConfig] | dict[str, str], allow_labels_for_unavailable: bool = False):
        self.configs = {name: config if isinstance(config, ModelConfig) else ModelConfig(name, config)
                        for name, config in configs.items()}
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._states: dict[str, dict[int, tuple[str, str]]] = {}  # {name: {version: (state, error)}}
        self._labels: dict[str, dict[str, int]] = {}
        self._failed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def base_paths(self) -> dict[str, str]:
        return {name: config.base_path for name, config in self.configs.items()}

    def _set_state(self, name: str, version: int, state: str, error: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, error)

    def refresh(self) -> list[tuple[str, int, str]]:
        """Loads the versions the policies want and unloads the rest; returns what changed as (name, version, verb)."""
        with self._refresh_lock:
            changes = []
            for name, config in self.configs.items():
                changes += self._refresh_model(name, config)
            for name in set(self._loaded) - set(self.configs):  # removed from models.config
                changes += self._unload(name, set(self._loaded[name]))
            if changes:
                gc.collect()  # frees the unloaded versions' graphs now, not at some later collection
            return changes

    def _refresh_model(self, name: str, config: ModelConfig) -> list[tuple[str, int, str]]:
        on_disk = []
        if os.path.isdir(config.base_path):
            on_disk = [int(entry) for entry in os.listdir(config.base_path)
                       if entry.isdigit() and os.path.exists(os.path.join(config.base_path, entry, "saved_model.pb"))]
        wanted = config.wanted(on_disk)
        loaded = self._loaded.setdefault(name, {})
        changes = []
        for version in sorted(wanted - set(loaded)):
            path = os.path.join(config.base_path, str(version))
            if (name, path) in self._failed:
                continue
            self._set_state(name, version, LOADING)
            try:
                servable = LoadedVersion(name, version, path, tf.saved_model.load(path), read_signature_defs(path))
            except Exception as error:  # a broken version must not stop the others
                logging.error("could not load %s version %d: %s", name, version, error)
                self._failed.add((name, path))
                self._set_state(name, version, END, str(error))
                continue
            with self._lock:
                loaded[version] = servable
            self._set_state(name, version, AVAILABLE)
            changes.append((name, version, "loaded"))
        # As TF Serving's availability-preserving policy: unload only once a wanted version serves.
        if wanted & set(loaded) or not wanted:
            changes += self._unload(name, set(loaded) - wanted)
        return changes

    def _unload(self, name: str, versions: set[int]) -> list[tuple[str, int, str]]:
        with self._lock:
            for version in versions:
                del self._loaded[name][version]
                self._states[name][version] = (END, "")
        return [(name, version, "unloaded") for version in sorted(versions)]

    def configure(self, configs: dict[str, ModelConfig]) -> list[tuple[str, int, str]]:
        """Serves a new models.config: adds, changes and removes models, then sets the labels.

        As TF Serving's ReloadConfig: the models change first; if a label points
        at a version that is not loaded, the labels keep their old values and
        ModelConfigError says which.
        """
        self.configs = dict(configs)
        changes = self.refresh()
        labels = {}
        for name, config in self.configs.items():
            for label, version in config.labels.items():
                if not self.allow_labels_for_unavailable and version not in self._loaded.get(name, {}):
                    raise ModelConfigError(f"Request to assign label to version {version} of model {name}, "
                                           f"which is not currently available for inference")
                labels.setdefault(name, {})[label] = version
        with self._lock:
            self._labels = labels
        return changes

    def start_polling(self, file_system_seconds: float, config_file: str | None = None,
                      config_seconds: float = 0, on_change: Callable[[str], None] = logging.warning) -> None:
        """Looks for new versions every ``file_system_seconds`` and re-reads ``config_file`` every
        ``config_seconds`` (0: never), in one background thread; ``on_change`` hears each change."""
        watch_config = bool(config_file) and config_seconds > 0

        def poll():
            next_refresh = time.monotonic() + file_system_seconds
            next_config = time.monotonic() + config_seconds if watch_config else float("inf")
            while not self._stop.wait(max(0.0, min(next_refresh, next_config) - time.monotonic())):
                try:
                    changes = []
                    if time.monotonic() >= next_config:
                        next_config = time.monotonic() + config_seconds
                        new = parse_models_config(config_file)
                        if new != self.configs:
                            on_change(f"models.config changed: serving {', '.join(sorted(new)) or 'no model'}")
                            changes = self.configure(new)
                    if time.monotonic() >= next_refresh:
                        next_refresh = time.monotonic() + file_system_seconds
                        changes += self.refresh()
                    for name, version, verb in changes:
                        on_change(f"{verb} {name} version {version}")
                except ModelConfigError as error:
                    on_change(f"models.config {config_file}: {error}")
        self._thread = threading.Thread(target=poll, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def versions(self, name: str) -> list[int]:
        """Loaded versions of ``name``, ascending; ServingError if the model is unknown."""
        with self._lock:
            if name not in self._loaded and name not in self.configs:
                raise not_found(f"Servable not found for request: Latest({name})")
            return sorted(self._loaded.get(name, {}))

    def labels(self, name: str) -> dict[str, int]:
        """{label: version} of ``name`` as last set by :meth:`configure`."""
        with self._lock:
            return dict(self._labels.get(name, {}))

    def status(self, name: str, version: int | None = None) -> list[tuple[int, str, str]]:
        """(version, state, error) of every version seen, highest first, as TF Serving's GetModelStatus."""
        with self._lock:
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [(version, *states[version])]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [(v, *states[v]) for v in sorted(states, reverse=True)]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The requested version (by number or label), or the highest; ServingError if it is not loaded."""
        with self._lock:
            if version is not None and label:
                raise ServingError(f"Both model version ({version}) and model version label ({label}) "
                                   f"cannot be supplied.")
            if label:
                if label not in self._labels.get(name, {}):
                    raise ServingError(f"Unrecognized servable version label: {label}")
                version = self._labels[name][label]
            versions = self._loaded.get(name)
            if not versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return versions[version]
