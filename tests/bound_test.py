"""The bound in bits, the device's noise and its memo, and a noisy client from training to the server."""

import json
import math
import os

import numpy as np
import pytest

from nopeek_tf.device import bound
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf.device.noise import DeviceNoiseSource

NOISE = manifest_lib.Noise(kind="gaussian", stddev=0.3, clip=1.0)


def test_bound_arithmetic():
    assert bound.bound_bits(4, stddev=0.26, clip=1.0) == pytest.approx(2 * math.log2(1 + 1 / 0.26 ** 2))
    assert bound.bound_bits(16, stddev=1.0, clip=1.0) == pytest.approx(8.0)  # 16/2 * log2(2)
    assert bound.bound_bits(10, stddev=2.0, clip=2.0) == pytest.approx(5.0)  # only clip/stddev matters
    assert bound.bound_bits(4) == 128 and bound.bound_bits(4, "int8") == 32 and bound.bound_bits(4, "float16") == 64
    # The wire caps it: almost no noise cannot carry more than the int8 wire's 8 bits per value.
    assert bound.bound_bits(2, "int8", stddev=1e-6, clip=1.0) == 16
    assert bound.stddev_for_bits(4, 8.0) == pytest.approx(1 / math.sqrt(15))
    assert bound.bound_bits(4, stddev=bound.stddev_for_bits(4, 6.0), clip=1.0) == pytest.approx(6.0)
    assert bound.label_bits(10) == pytest.approx(3.3219, abs=1e-4) and bound.label_bits(40) == pytest.approx(5.3219,
                                                                                                            abs=1e-4)
    report = bound.bound_report(8, 10, 0.5, 1.0, "int8")
    assert report["bound_bits"] == pytest.approx(4 * math.log2(5), abs=1e-4) and report["bound_wire"] == "int8"
    with pytest.raises(ValueError, match="clip"):
        bound.bound_bits(4, stddev=0.3)
    with pytest.raises(ValueError, match="wire"):
        bound.bound_bits(4, "int4")


def test_noise_is_memoised_per_image_and_fresh_per_key(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    clean = rng.uniform(-1.5, 1.5, (3, 50)).astype(np.float32)
    device = DeviceNoiseSource(NOISE, str(tmp_path / "device"))
    first = device.add(pixels, clean)
    assert first.dtype == np.float32 and first.shape == clean.shape
    np.testing.assert_array_equal(device.add(pixels, clean), first)  # the same images: the same message
    np.testing.assert_array_equal(device.add(pixels[1:2], clean[1:2]), first[1:2])
    assert not np.allclose(first[0], first[1])  # different images: different draws
    assert oct(os.stat(tmp_path / "device" / "device_key").st_mode & 0o777) == "0o600"

    restarted = DeviceNoiseSource(NOISE, str(tmp_path / "device"))  # same key and memo on disk
    np.testing.assert_array_equal(restarted.add(pixels, clean), first)
    other = DeviceNoiseSource(NOISE, str(tmp_path / "other device"))
    in_memory = DeviceNoiseSource(NOISE)
    for source in (other, in_memory):
        assert np.abs(source.add(pixels, clean) - first).min() > 0  # a new key: new draws everywhere
    os.remove(tmp_path / "device" / "device_key")  # a new key on the same device: its old memo no longer answers
    assert np.abs(DeviceNoiseSource(NOISE, str(tmp_path / "device")).add(pixels, clean) - first).min() > 0


def test_noise_has_the_manifests_stddev_on_clipped_values():
    source = DeviceNoiseSource(NOISE, memoise=False)
    clean = np.linspace(-3, 3, 200_000, dtype=np.float32)
    noise = source.draw(clean) - np.clip(clean, -1, 1)
    assert abs(noise.std() - 0.3) < 0.003 and abs(noise.mean()) < 0.003
    assert abs(np.mean(noise ** 4) / noise.var() ** 2 - 3) < 0.1  # Gaussian kurtosis


def test_manifest_noise_round_trip_and_refusals(tmp_path):
    values = {"kind": "gaussian", "stddev": 0.3, "clip": 1.0}
    assert json.loads(json.dumps(manifest_lib.Noise(**values).__dict__)) == values
    with pytest.raises(ValueError, match="noise must be gaussian"):
        manifest_lib.Manifest.from_json({"format_version": manifest_lib.FORMAT_VERSION, "clients": {},
                                         "preprocessing": {"image_size": [2, 2], "channels": 1},
                                         "noise": {"kind": "gaussian", "stddev": 0, "clip": 1}})


@pytest.mark.parametrize("flags, message", [
    (dict(bounded=True), "--bounded needs --bottleneck"),
    (dict(bottleneck=4, device_noise=0.3), "--device_noise needs --bounded"),
    (dict(bottleneck=4, bounded=True, device_noise=0.3, noise="gaussian", noise_scale=1.0), "replaces the --noise"),
    (dict(bottleneck=4, bounded=True, device_noise_ramp_epochs=1.0), "need --device_noise"),
])
def test_bad_bound_settings_name_the_flag(flags, message):
    from nopeek_tf.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig(dataset="orl_faces", **flags).validate()


def test_device_noise_layer_in_training_and_inference():
    import keras

    from nopeek_tf.core import models

    layer = models.DeviceNoise(0.5)
    values = np.full((2000, 8), 3.0, np.float32)  # clipped to 1 first
    inference = keras.ops.convert_to_numpy(layer(values))
    assert abs(inference.mean() - 1.0) < 0.02 and abs(inference.std() - 0.5) < 0.02
    layer.noise_scale.assign(0.0)  # a warm-up: no noise in training, the full noise at inference
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(values, training=True)), np.ones_like(values))
    assert abs(keras.ops.convert_to_numpy(layer(values)).std() - 0.5) < 0.02


@pytest.fixture(scope="module")
def noisy_export(tmp_path_factory):
    """A bounded ORL client with device noise, trained briefly and exported (float32 and int8)."""
    from export import export
    from nopeek_tf import config as config_lib
    from nopeek_tf import training

    root = tmp_path_factory.mktemp("noisy")
    model_dir, export_dir = str(root / "run"), str(root / "export")
    metrics = training.train_and_evaluate(config_lib.TrainConfig(
        dataset="orl_faces", image_size=(28, 23), cut="dense", bottleneck=16, bounded=True, device_noise=0.5,
        alpha=0.0, epochs=3, batch_size=16, dcor_batch_size=50, verbose=0), model_dir)
    lines = []
    manifest = export.export_model(export.ExportConfig(model_dir=model_dir, export_dir=export_dir,
                                                       variants=("float32", "int8"), parity_images=80,
                                                       force=True),  # 3 brief epochs: near chance; the noise is tested
                                   log=lines.append)
    return model_dir, export_dir, manifest, metrics, lines


def test_training_and_export_write_the_noise_and_the_bound(noisy_export):
    model_dir, export_dir, manifest, metrics, lines = noisy_export
    expected = 16 / 2 * math.log2(1 + 1 / 0.5 ** 2)
    assert metrics["bound_bits"] == pytest.approx(expected, abs=1e-3)
    assert metrics["label_bits"] == pytest.approx(math.log2(40), abs=1e-3)
    written = json.load(open(os.path.join(export_dir, "client", "manifest.json")))
    assert written["noise"] == {"kind": "gaussian", "stddev": 0.5, "clip": 1.0}
    assert written["privacy"]["bound_bits"] == pytest.approx(expected, abs=1e-3)
    assert "worst_attack" not in written["privacy"]  # no leakage evaluation: the bound alone
    assert any(line.startswith("bound: one request reveals at most 18.58 bits") for line in lines)
    # The .tflite holds no noise: it gives the Keras client's clean, bounded activations.
    from nopeek_tf import model_dir as model_dir_lib
    from nopeek_tf.device.litert import ClientRunner
    from nopeek_tf.training import data

    split, _ = model_dir_lib.load(model_dir)
    images = data.to_arrays(data.load("orl_faces", None, (28, 23)).test, limit=20)[0]
    runner = ClientRunner.from_file(os.path.join(export_dir, "client", "client_float32.tflite"))
    device = runner.from_float_images(images)
    np.testing.assert_allclose(device, split.client.predict(images, verbose=0), atol=1e-5)
    assert np.abs(device).max() <= 1.0
    wire = manifest.clients["int8"].wire_quantization
    assert wire.zero_point == 0 and wire.scale == pytest.approx((1.0 + 4 * 0.5) / 127)
    assert manifest.clients["float32"].wire_quantization is None


def test_the_server_never_sees_clean_activations(noisy_export, tmp_path):
    """What reaches the server: memoised per image, fresh per device, with the manifest's stddev; int8 too."""
    from edge.client import EdgeClient, load_image
    from nopeek_tf.device.litert import ClientRunner
    from nopeek_tf.training import data
    from tests.local_server import Capture, LocalServer

    import tensorflow as tf

    _, export_dir, manifest, _, _ = noisy_export
    faces = [os.path.join(data.orl_faces_dir(), f"s{person}", "1.pgm") for person in range(1, 21)]
    float_file = os.path.join(export_dir, "client", "client_float32.tflite")
    int8_file = os.path.join(export_dir, "client", "client_int8.tflite")
    capture = Capture()
    server = LocalServer({manifest.model_name: os.path.join(export_dir, "serving", manifest.model_name)},
                         **capture.server_hooks())
    try:
        device = EdgeClient(float_file, server=server.grpc, transport="grpc", state_dir=str(tmp_path / "a"))
        for face in faces:
            device.classify(face)
        device.classify(faces[0])  # the same image again
        EdgeClient(float_file, server=server.rest, state_dir=str(tmp_path / "a")).classify(faces[0])  # restarted
        EdgeClient(float_file, server=server.rest, state_dir=str(tmp_path / "b")).classify(faces[0])  # another
        int8_device = EdgeClient(int8_file, server=server.grpc, transport="grpc")
        int8_result = int8_device.classify(faces[1])
    finally:
        server.stop()
    grpc_sent = [tf.make_ndarray(request.inputs["activations"]) for request in capture.grpc]
    rest_sent = [np.asarray(json.loads(body)["instances"], np.float32) for body in capture.rest]
    assert len(grpc_sent) == 22 and len(rest_sent) == 2
    np.testing.assert_array_equal(grpc_sent[20], grpc_sent[0])  # memoised
    np.testing.assert_allclose(rest_sent[0], grpc_sent[0], rtol=1e-6)  # restarted with its key: the same
    assert np.abs(rest_sent[1] - grpc_sent[0]).min() > 0  # another device: another draw

    runner = ClientRunner.from_file(float_file)
    clean = runner.float_activations(np.stack([load_image(face, manifest.preprocessing) for face in faces]))
    noise = np.concatenate(grpc_sent[:20]) - clean
    assert noise.size == 20 * 16 and abs(noise.std() - 0.5) < 0.06 and abs(noise.mean()) < 0.08
    assert grpc_sent[21].dtype == np.int8 and int8_result.bytes_sent == 16
    int8_noise = manifest_lib.dequantize(grpc_sent[21], manifest.clients["int8"].wire_quantization) - clean[1]
    assert 0.2 < np.abs(int8_noise).mean() < 0.8  # noisy (E|N| = 0.4 for stddev 0.5), not the clean values


def test_an_int8_client_with_noise_matches_the_float32_ones_classes_within_the_noise(noisy_export):
    import tensorflow as tf

    from export import serving_model
    from nopeek_tf.device.litert import ClientRunner
    from nopeek_tf.training import data

    _, export_dir, manifest, _, _ = noisy_export
    pixels = np.round(data.to_arrays(data.load("orl_faces", None, (28, 23)).test, limit=80)[0] * 255).astype(np.uint8)
    signatures = tf.saved_model.load(os.path.join(export_dir, "serving", manifest.model_name,
                                                  str(manifest.server_version))).signatures
    runners = {variant: ClientRunner.from_file(os.path.join(export_dir, "client", f"client_{variant}.tflite"))
               for variant in ("float32", "int8")}

    def classes(variant):
        noise = DeviceNoiseSource(manifest.noise, memoise=False)
        return serving_model.served_logits(runners[variant], signatures, pixels, noise).argmax(axis=1)

    reference = classes("float32")
    between_float_draws = np.mean(classes("float32") == reference)
    int8_agreement = np.mean(classes("int8") == reference)
    assert int8_agreement >= between_float_draws - 0.1
    clean = {variant: serving_model.served_logits(runner, signatures, pixels).argmax(axis=1)
             for variant, runner in runners.items()}
    assert np.mean(clean["int8"] == clean["float32"]) >= 0.9  # without noise, the int8 wire keeps the classes


def test_variant_auto_times_once_and_remembers(noisy_export, tmp_path, monkeypatch):
    from edge import client as edge_client

    _, export_dir, manifest, _, _ = noisy_export
    client_dir = os.path.join(export_dir, "client")
    logged = []
    chosen = edge_client.choose_variant(client_dir, "auto", str(tmp_path), log=logged.append)
    assert os.path.basename(chosen) in ("client_float32.tflite", "client_int8.tflite")
    assert logged and "using" in logged[0]
    remembered = json.load(open(os.path.join(tmp_path, f"{manifest.model_name}-v{manifest.server_version}",
                                             edge_client.VARIANT_CHOICE_FILE)))
    assert set(remembered["milliseconds"]) == {"float32", "int8"} and chosen.endswith(f"_{remembered['variant']}.tflite")

    def no_timing(*_args, **_kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(edge_client, "time_variant", no_timing)
    assert edge_client.choose_variant(client_dir, "auto", str(tmp_path)) == chosen
    assert edge_client.choose_variant(client_dir, "int8", str(tmp_path)).endswith("client_int8.tflite")
    with pytest.raises(edge_client.EdgeError, match="--variant float16: not exported"):
        edge_client.choose_variant(client_dir, "float16", str(tmp_path))


# --- The device's own policy: its bound, --max_bits, --budget_bits ---------------------------------

def _rewritten_client(export_dir, tmp_path, stddev: float, card: str = "as_noise") -> str:
    """A copy of the exported float32 client whose manifest says ``stddev``; its privacy card left as it was
    (``card="kept"``), given the noise only, or rewritten to match the new noise (``"as_noise"``)."""
    import shutil

    folder = tmp_path / f"client_{stddev:g}_{card}"
    shutil.copytree(os.path.join(export_dir, "client"), folder)
    with open(folder / "manifest.json") as f:
        values = json.load(f)
    values["noise"]["stddev"] = stddev
    if card != "kept":
        values["privacy"]["noise_stddev"] = stddev
    if card == "as_noise":
        values["privacy"]["bound_bits"] = round(bound.bound_bits(16, "float32", stddev, 1.0), 4)
    with open(folder / "manifest.json", "w") as f:
        json.dump(values, f)
    return str(folder / "client_float32.tflite")


def test_the_device_computes_its_bound_and_refuses_a_manifest_whose_card_disagrees(noisy_export, tmp_path):
    from edge.client import EdgeClient, EdgeError

    _, export_dir, _, _, _ = noisy_export
    shipped = EdgeClient(os.path.join(export_dir, "client", "client_float32.tflite"))
    assert shipped.bound_bits == pytest.approx(16 / 2 * math.log2(1 + 1 / 0.5 ** 2))
    with pytest.raises(EdgeError, match=r"^--manifest: the manifest's privacy card was made for noise 0.5, its noise "
                                        r"entry says 0.0001: refusing an altered manifest$"):
        EdgeClient(_rewritten_client(export_dir, tmp_path, 1e-4, card="kept"))
    with pytest.raises(EdgeError, match=r"claims 18.58 bits per request, but its noise \(stddev 0.0001\) on 16 "
                                        r"values gives 213: refusing"):
        EdgeClient(_rewritten_client(export_dir, tmp_path, 1e-4, card="noise_only"))
    # Card and noise rewritten together: accepted, and the device prints what that noise really gives.
    rewritten = EdgeClient(_rewritten_client(export_dir, tmp_path, 1e-4))
    assert rewritten.bound_bits == pytest.approx(16 / 2 * math.log2(1 + 1e8), abs=1e-3)


def test_max_bits_holds_against_a_manifest_rewritten_to_almost_no_noise(noisy_export, tmp_path):
    """The server-side capture shows the noise --max_bits needs, not the manifest's 0.0001."""
    from edge.client import EdgeClient, load_image
    from nopeek_tf.device.litert import ClientRunner
    from nopeek_tf.training import data
    from tests.local_server import Capture, LocalServer

    import tensorflow as tf

    _, export_dir, manifest, _, _ = noisy_export
    tflite = _rewritten_client(export_dir, tmp_path, 1e-4)
    faces = [os.path.join(data.orl_faces_dir(), f"s{person}", "2.pgm") for person in range(1, 31)]
    capture = Capture()
    server = LocalServer({manifest.model_name: os.path.join(export_dir, "serving", manifest.model_name)},
                         **capture.server_hooks())
    try:
        device = EdgeClient(tflite, server=server.grpc, transport="grpc", max_bits=8.0)
        for face in faces:
            device.classify(face)
    finally:
        server.stop()
    needed = bound.stddev_for_bits(16, 8.0, 1.0)  # 1.0: 16 values carry 8 bits
    assert device.noise.noise.stddev == pytest.approx(needed) and device.bound_bits == pytest.approx(8.0)
    sent = np.concatenate([tf.make_ndarray(request.inputs["activations"]) for request in capture.grpc])
    clean = ClientRunner.from_file(tflite).float_activations(
        np.stack([load_image(face, manifest.preprocessing) for face in faces]))
    assert sent.shape == (30, 16) and abs((sent - clean).std() - needed) < 0.1 * needed
    # A manifest with more noise than the policy needs keeps it: the device only ever adds noise.
    assert EdgeClient(os.path.join(export_dir, "client", "client_float32.tflite"), max_bits=100.0).noise.noise.stddev \
        == 0.5


def test_max_bits_refuses_a_client_whose_values_are_not_bounded():
    from nopeek_tf.device import policy

    assert policy.enforced_noise(None, 16, 8.0, "TANH").stddev == pytest.approx(1.0)
    assert policy.enforced_noise(NOISE, 16, None, "RELU") is NOISE  # no policy: the manifest's noise
    with pytest.raises(policy.PolicyError, match=r"^--max_bits needs a client whose values are bounded .* this one "
                                                 r"ends in FULLY_CONNECTED: train it with --bottleneck=K --bounded$"):
        policy.enforced_noise(None, 16, 8.0, "FULLY_CONNECTED")


def test_the_budget_stops_new_sends_and_still_answers_repeats(noisy_export, tmp_path):
    from edge.client import EdgeClient
    from nopeek_tf.device import policy
    from nopeek_tf.training import data
    from tests.local_server import Capture, LocalServer

    _, export_dir, manifest, _, _ = noisy_export
    tflite = os.path.join(export_dir, "client", "client_float32.tflite")
    faces = [os.path.join(data.orl_faces_dir(), f"s{person}", "3.pgm") for person in range(1, 6)]
    capture = Capture()
    server = LocalServer({manifest.model_name: os.path.join(export_dir, "serving", manifest.model_name)},
                         **capture.server_hooks())
    state = str(tmp_path / "device")
    try:
        device = EdgeClient(tflite, server=server.grpc, transport="grpc", state_dir=state, max_bits=10.0,
                            budget_bits=30.0)
        answers = [device.classify(face).class_name for face in faces[:3]]  # 3 x 10 bits: the budget
        with pytest.raises(policy.BudgetExhausted, match=r"sent 30.00 of its 30.00 bits \(3 new images\); this new "
                                                         r"image would take 10.00 more: not sent"):
            device.classify(faces[3])
        assert device.classify(faces[0]).class_name == answers[0]  # a repeat: memoised, free
        restarted = EdgeClient(tflite, server=server.grpc, transport="grpc", state_dir=state, max_bits=10.0,
                               budget_bits=30.0)
        with pytest.raises(policy.BudgetExhausted):  # the ledger is kept in --state_dir
            restarted.classify(faces[4])
    finally:
        server.stop()
    assert len(capture.grpc) == 4  # three new images and one repeat; nothing of the refused ones
    assert capture.grpc[3].inputs["activations"] == capture.grpc[0].inputs["activations"]
    with pytest.raises(policy.PolicyError, match="--budget_bits must be > 0"):
        policy.BitBudget(0.0)


def test_an_unbounded_client_gets_neither_max_bits_nor_a_budget(exported):
    from edge.client import EdgeClient, EdgeError

    export_dir, manifest = exported  # NoPeek without a bounded bottleneck or noise
    tflite = os.path.join(export_dir, "client", "client_float32.tflite")
    assert EdgeClient(tflite).bound_bits == 32 * np.prod(manifest.activation_shape)  # the float32 wire's limit
    with pytest.raises(EdgeError, match=r"^--max_bits needs a client whose values are bounded"):
        EdgeClient(tflite, max_bits=8.0)
    with pytest.raises(EdgeError, match=r"^--budget_bits needs a bound per request: a manifest with device noise, "
                                        r"or --max_bits$"):
        EdgeClient(tflite, budget_bits=100.0)


@pytest.mark.slow
def test_the_device_noise_warms_up_and_ramps_with_the_training_steps(tmp_path):
    from nopeek_tf import config as config_lib
    from nopeek_tf import model_dir as model_dir_lib
    from nopeek_tf import training
    from nopeek_tf.core import models

    settings = dict(dataset="orl_faces", image_size=(28, 23), cut="dense", bottleneck=4, bounded=True,
                    device_noise=0.4, device_noise_warmup_epochs=1, device_noise_ramp_epochs=2, alpha=0.0,
                    batch_size=16, dcor_batch_size=50, verbose=0)
    model_dir = str(tmp_path / "run")
    training.train_and_evaluate(config_lib.TrainConfig(epochs=1, **settings), model_dir)
    layer = model_dir_lib.load(model_dir)[0].full.get_layer(models.DEVICE_NOISE_NAME)
    assert float(layer.noise_scale.numpy()) == 0.0  # the first epoch is the warm-up
    training.train_and_evaluate(config_lib.TrainConfig(epochs=2, **settings), model_dir)  # resumed
    split = model_dir_lib.load(model_dir)[0]
    scale = float(split.full.get_layer(models.DEVICE_NOISE_NAME).noise_scale.numpy())
    assert 0.4 < scale <= 0.5  # the last step of epoch 2: half-way up the 2-epoch ramp
    assert split.device_noise.stddev == 0.4 and split.bounded


@pytest.mark.slow
def test_the_command_line_client_picks_its_variant_and_adds_the_noise_without_tensorflow(noisy_export, tmp_path):
    from nopeek_tf.training import data
    from tests.edge_test import _run_edge_cli
    from tests.local_server import LocalServer

    _, export_dir, manifest, _, _ = noisy_export
    server = LocalServer({manifest.model_name: os.path.join(export_dir, "serving", manifest.model_name)})
    faces = os.path.join(data.orl_faces_dir(), "s1")
    try:
        runs = [_run_edge_cli(["--tflite", os.path.join(export_dir, "client"), "--state_dir", str(tmp_path),
                               "--server", server.grpc, "--transport", "grpc", faces]) for _ in range(2)]
    finally:
        server.stop()
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert "device noise: std 0.5 (the manifest's) on values clipped to +-1" in result.stdout
        assert "at most 18.58 bits" in result.stdout
    assert "timed the client variants on this device" in runs[0].stdout
    assert "timed" not in runs[1].stdout  # remembered
    answers = [[line.split(": ")[1] for line in result.stdout.splitlines() if ".pgm: " in line] for result in runs]
    # The second run sends the memoised noisy values: the same class and probability for every face.
    assert len(answers[0]) == 10 and [a.split(")")[0] for a in answers[0]] == [a.split(")")[0] for a in answers[1]]
    assert len(os.listdir(os.path.join(tmp_path, f"{manifest.model_name}-v{manifest.server_version}",
                                       "noise_memo"))) == 10  # one memo per face, reused by the second run
