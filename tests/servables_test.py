"""Version policies, labels and models.config reloads of the local server, as TF Serving manages them."""

import os
import shutil
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.servables import ModelConfig, ModelConfigError, ModelManager, ServingError, parse_models_config
from tests.local_server import LocalServer

MODEL = "nopeek_orl_faces"


def _versions(tmp_path, exported, versions):
    """A base path with copies of the exported version 1 as the given versions."""
    export_dir, _ = exported
    base = tmp_path / MODEL
    base.mkdir(exist_ok=True)
    for version in versions:
        shutil.copytree(os.path.join(export_dir, "serving", MODEL, "1"), base / str(version))
    return str(base)


def _write_config(path, base, policy="", labels=None):
    labels_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    path.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" model_platform: '
                    f'"tensorflow" {policy}{labels_text} }} }}')
    return str(path)


def _rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.parametrize("policy, expected", [
    ("", [3]),
    ("model_version_policy { latest { num_versions: 2 } }", [2, 3]),
    ("model_version_policy { all {} }", [1, 2, 3]),
    ("model_version_policy { specific { versions: 1 versions: 3 } }", [1, 3]),
])
def test_version_policies_of_models_config(exported, tmp_path, policy, expected):
    base = _versions(tmp_path, exported, [1, 2, 3])
    configs = parse_models_config(_write_config(tmp_path / "models.config", base, policy))
    manager = ModelManager(configs)
    manager.configure(configs)
    assert manager.versions(MODEL) == expected
    assert [(v, state) for v, state, _ in manager.status(MODEL)] == [
        (v, "AVAILABLE") for v in sorted(expected, reverse=True)]


def test_labels_resolve_and_a_label_on_an_unloaded_version_is_refused(exported, tmp_path):
    base = _versions(tmp_path, exported, [1, 2])
    config_file = tmp_path / "models.config"
    policy = "model_version_policy { all {} }"
    configs = parse_models_config(_write_config(config_file, base, policy, {"stable": 1, "canary": 2}))
    manager = ModelManager(configs)
    manager.configure(configs)
    assert manager.get(MODEL, label="stable").version == 1
    assert manager.get(MODEL, label="canary").version == 2
    with pytest.raises(ServingError, match="Unrecognized servable version label: beta"):
        manager.get(MODEL, label="beta")
    with pytest.raises(ServingError, match="cannot be supplied"):
        manager.get(MODEL, 1, "stable")
    # Version 2 only; "stable" still names version 1, which the new policy unloads: refused, old labels kept.
    configs = parse_models_config(_write_config(config_file, base, "", {"stable": 1}))
    with pytest.raises(ModelConfigError, match="label to version 1 .* not currently available"):
        manager.configure(configs)
    assert manager.versions(MODEL) == [2]
    with pytest.raises(ServingError, match="Specific"):
        manager.get(MODEL, label="stable")
    allowing = ModelManager(configs, allow_labels_for_unavailable=True)
    allowing.configure(configs)
    with pytest.raises(ServingError, match="Specific"):
        allowing.get(MODEL, label="stable")


def test_models_config_is_re_read_while_serving_and_labels_reach_both_protocols(exported, tmp_path):
    base = _versions(tmp_path, exported, [1, 2])
    config_file = tmp_path / "models.config"
    _write_config(config_file, base, "model_version_policy { all {} }", {"stable": 1})
    configs = parse_models_config(str(config_file))
    server = LocalServer(configs)
    heard = []
    server.manager.start_polling(0.2, str(config_file), 0.2, on_change=heard.append)
    _, manifest = exported
    activations = np.zeros((1, *manifest.activation_shape), np.float32)
    try:
        answer = requests.post(f"http://{server.rest}/v1/models/{MODEL}/labels/stable:predict",
                               json={"instances": activations.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.version_label = "stable"
        request.inputs["activations"].CopyFrom(tf.make_tensor_proto(activations))
        assert stub.Predict(request, timeout=30).model_spec.version.value == 1

        _write_config(config_file, base, "model_version_policy { specific { versions: 2 } }", {"stable": 2})
        deadline = time.time() + 30
        while time.time() < deadline and server.manager.versions(MODEL) != [2]:
            time.sleep(0.1)
        assert server.manager.versions(MODEL) == [2], heard
        # As in TF Serving, the models change first and the labels after them: wait for the label.
        deadline = time.time() + 30
        while time.time() < deadline and server.manager.labels(MODEL).get("stable") != 2:
            time.sleep(0.1)
        assert stub.Predict(request, timeout=30).model_spec.version.value == 2
        status = requests.get(f"http://{server.rest}/v1/models/{MODEL}", timeout=30).json()
        assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [("2", "AVAILABLE"),
                                                                                         ("1", "END")]
        assert any("unloaded" in line and "version 1" in line for line in heard), heard
    finally:
        server.stop()


@pytest.mark.slow
def test_twenty_exported_versions_keep_one_loaded_and_memory_flat(exported, tmp_path):
    """Each new version replaces the last (the latest policy); unloading frees it, so memory stays flat."""
    base = _versions(tmp_path, exported, [1])
    manager = ModelManager({MODEL: ModelConfig(MODEL, base)})
    manager.configure(manager.configs)
    rss = {}
    for version in range(2, 21):
        _versions(tmp_path, exported, [version])
        manager.refresh()
        assert manager.versions(MODEL) == [version]
        rss[version] = _rss_mib()
    growth = rss[20] - rss[8]
    # For comparison: the same 13 versions held at once (TF Serving's "all" policy).
    held = ModelManager({MODEL: ModelConfig(MODEL, base, policy="specific", versions=tuple(range(8, 21)))})
    before = _rss_mib()
    held.configure(held.configs)
    held_growth = _rss_mib() - before
    print(f"RSS growth over versions 8..20: {growth:.1f} MiB with one loaded; {held_growth:.1f} MiB holding all 13")
    assert len(held.versions(MODEL)) == 13
    assert growth < held_growth / 2, (growth, held_growth)
