"""Export: TFLite clients (builtin ops), server SavedModel for TF Serving, manifest, parity."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from export import card as card_lib
from export import export, tflite
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf.device.litert import LiteRTModel
from tests.conftest import REPO_ROOT


def test_export_warns_without_a_leakage_evaluation_above_the_excess_threshold_and_without_a_bound():
    from nopeek_tf.device import bound

    unbounded = bound.bound_report(4, 10)  # no noise: 4 float32 values, 128 bits
    noisy = bound.bound_report(4, 10, stddev=0.26, clip=1.0)
    no_evaluation = card_lib.privacy_verdict(unbounded, "runs/x")
    assert no_evaluation[0].startswith("warning: bound: one request reveals at most 128.00 bits")
    assert "no bound below the wire format's own" in no_evaluation[0]
    assert no_evaluation[1].startswith("warning: runs/x has no leakage evaluation")
    assert card_lib.privacy_verdict(noisy, "runs/x")[0] == (
        "bound: one request reveals at most 7.96 bits about the image (4 values on a float32 wire; the class "
        "takes 3.32)")
    card = {**noisy, "worst_attack": "public_client", "worst_ssim": 0.8, "floor_ssim": 0.35, "excess_ssim": 0.45}
    assert card_lib.privacy_verdict(card, "runs/x")[1].startswith("warning: privacy card: worst attack public_client")
    calm = {**card, "worst_ssim": 0.4, "excess_ssim": 0.05}
    assert card_lib.privacy_verdict(calm, "runs/x")[1] == ("privacy card: worst attack public_client SSIM 0.400, "
                                                         "label-only floor 0.350, excess +0.050")


def test_layout_and_manifest(exported, trained_dir):
    export_dir, manifest = exported
    client_dir = os.path.join(export_dir, "client")
    loaded = manifest_lib.Manifest.load(client_dir)
    assert loaded == manifest
    assert set(loaded.clients) == set(manifest_lib.VARIANTS)
    metrics = json.load(open(os.path.join(trained_dir, "metrics.json")))
    assert loaded.source_metrics["test_dcor"] == metrics["test_dcor"]
    assert (loaded.arch, loaded.cut, loaded.alpha, loaded.dataset) == ("orl_cnn", "conv2", 1.0, "orl_faces")
    assert loaded.preprocessing.image_size == [56, 46] and loaded.preprocessing.channels == 1
    assert loaded.model_name == "nopeek_orl_faces" and loaded.server_version == 1
    assert loaded.class_names[:2] == ["s1", "s2"]
    int8 = loaded.clients["int8"]
    assert int8.input.dtype == "uint8" and int8.input.quantization.zero_point == 0
    assert int8.input.quantization.scale == pytest.approx(1 / 255, rel=1e-3)
    assert int8.output.dtype == "int8" and int8.output.quantization.scale > 0
    assert int8.server_signature == manifest_lib.INT8_SIGNATURE
    assert loaded.clients["float32"].output.shape == loaded.activation_shape
    assert os.path.exists(os.path.join(export_dir, "serving", "nopeek_orl_faces", "1", "saved_model.pb"))
    assert not [name for name in os.listdir(export_dir) if name.startswith(".staging")]


def test_parity_thresholds(exported):
    _, manifest = exported
    parity = {variant: client.parity for variant, client in manifest.clients.items()}
    assert parity["float32"]["top1_agreement"] == 1.0
    assert parity["float32"]["max_abs_logit_diff"] < 1e-4
    assert parity["float16"]["top1_agreement"] >= 0.99
    assert parity["dynamic"]["top1_agreement"] >= 0.99
    assert parity["int8"]["accuracy"] >= parity["int8"]["keras_accuracy"] - 0.01
    assert parity["float32"]["keras_accuracy"] > 0.5  # a real, trained model: chance is 0.025


def test_tflite_files_load_in_litert_with_builtin_ops_only(exported):
    export_dir, manifest = exported
    for client in manifest.clients.values():
        model = LiteRTModel(os.path.join(export_dir, "client", client.file))
        assert not [op for op in model.op_names() if "flex" in op.lower()]
        assert str(model.input_dtype) == client.input.dtype
        assert list(model.output_detail["shape"][1:]) == client.output.shape
        assert os.path.getsize(os.path.join(export_dir, "client", client.file)) == client.size_bytes
    sizes = {variant: client.size_bytes for variant, client in manifest.clients.items()}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]


def test_int8_activations_are_served_by_the_int8_signature(exported, trained_dir):
    export_dir, manifest = exported
    server = tf.saved_model.load(os.path.join(export_dir, "serving", "nopeek_orl_faces", "1"))
    int8 = manifest.clients["int8"]
    client = LiteRTModel(os.path.join(export_dir, "client", int8.file))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 56, 46, 1), dtype=np.uint8)
    activations = client(manifest_lib.client_input(pixels, manifest.preprocessing, int8))
    assert activations.dtype == np.int8
    served = server.signatures[manifest_lib.INT8_SIGNATURE](activations=tf.constant(activations))
    dequantized = manifest_lib.dequantize(activations, int8.output.quantization)
    by_float = server.signatures["serving_default"](activations=tf.constant(dequantized))
    np.testing.assert_allclose(served["logits"].numpy(), by_float["logits"].numpy(), atol=1e-5)
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(served["class_ids"].numpy(), probabilities.argmax(axis=1))


def test_serving_files_parse_with_the_real_tooling(exported):
    export_dir, manifest = exported
    serving_dir = os.path.join(export_dir, "serving")
    config = text_format.Parse(open(os.path.join(serving_dir, "models.config")).read(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "nopeek_orl_faces" and model.model_platform == "tensorflow"
    assert model.base_path == "/models/nopeek_orl_faces"
    # tensorflow-serving-api does not ship the BatchingParameters proto: check its text form.
    batching = open(os.path.join(serving_dir, "batching_parameters.txt")).read()
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert re.search(rf"^{field} {{ value: \d+ }}$", batching, re.M), field
    shown = subprocess.run(["saved_model_cli", "show", "--all", "--dir",
                            os.path.join(serving_dir, "nopeek_orl_faces", "1")],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    default = shown.stdout.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    shape = ", ".join(str(d) for d in manifest.activation_shape)
    assert "inputs['activations']" in default and f"shape: (-1, {shape})" in default
    assert "outputs['probabilities']" in default and "outputs['class_ids']" in default
    assert "signature_def['serving_int8']" in shown.stdout


def test_each_export_adds_a_version(exported, trained_dir, tmp_path):
    shared_export_dir, first = exported
    export_dir = str(tmp_path / "export")
    shutil.copytree(shared_export_dir, export_dir)
    second = export.export_model(export.ExportConfig(model_dir=trained_dir, export_dir=export_dir,
                                                     variants=("float32",), parity_images=20),
                                 log=lambda *_: None)
    assert second.server_version == first.server_version + 1
    base = os.path.join(export_dir, "serving", "nopeek_orl_faces")
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert manifest_lib.Manifest.load(os.path.join(export_dir, "client")).server_version == 2
    assert sorted(os.listdir(os.path.join(export_dir, "client"))) == ["client_float32.tflite", "manifest.json"]


def test_flex_ops_are_refused_by_name():
    image = keras.Input((8, 8, 1))
    odd = keras.layers.Lambda(lambda x: tf.math.bessel_i1e(x))(image)
    with pytest.raises(export.ExportError, match="TensorFlow ops that TFLite builtins lack"):
        tflite.convert_client(keras.Model(image, odd), "float32")


def _run_cli(args):
    return subprocess.run([sys.executable, "-m", "export.export", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_bad_input_gives_one_line_and_leaves_nothing(trained_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "holds no trained model": [f"--model_dir={empty}", f"--export_dir={tmp_path / 'out1'}"],
        "--export_dir": [f"--model_dir={trained_dir}", f"--export_dir={tmp_path / 'file' / 'out'}"],
    }
    for expected, args in cases.items():
        result = _run_cli(args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out1").exists()
    with pytest.raises(export.ExportError, match="^--variants must be one of .*got 'int4'"):
        export.export_model(export.ExportConfig(model_dir=trained_dir, export_dir=str(tmp_path / "out2"),
                                                variants=("int4",)))
    assert not (tmp_path / "out2").exists()


def test_benchmark_prints_a_row_per_variant_without_tensorflow(exported):
    export_dir, manifest = exported
    script = ("import runpy, sys; sys.argv = ['benchmark', '--export_dir=%s', '--runs=3', '--warmup=1']; "
              "runpy.run_module('export.benchmark', run_name='__main__')" % export_dir)
    guard = "import sys; sys.modules['tensorflow'] = None; "  # importing TensorFlow would fail
    result = subprocess.run([sys.executable, "-c", guard + script], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ms |" in line]
    assert [row.split("|")[1].strip() for row in rows] == list(manifest.clients)
    int8_row = rows[list(manifest.clients).index("int8")]
    activation_bytes = int(np.prod(manifest.activation_shape))
    assert f"| {activation_bytes:,} | {56 * 46:,} |" in int8_row
    assert result.stdout.splitlines()[1].startswith("CPU: ")


def test_cpu_description_names_the_instructions_int8_kernels_use(tmp_path):
    from export.benchmark import cpu_description

    x86 = tmp_path / "x86"
    x86.write_text("model name\t: Some EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n")
    assert cpu_description(str(x86)).startswith("Some EPYC;") and "avx2, fma, avx512f, avx512_vnni" in \
        cpu_description(str(x86))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 asimddp\nCPU part\t: 0xd0b\n")
    assert cpu_description(str(arm)).endswith("asimd, asimddp") and "CPU part 0xd0b" in cpu_description(str(arm))
    assert cpu_description(str(tmp_path / "missing")) == "CPU unknown (no /proc/cpuinfo)"


@pytest.mark.slow
def test_layer_breakdown_times_each_prefix_of_the_client(trained_dir):
    from export.benchmark import layer_breakdown, layer_table
    from nopeek_tf import model_dir as model_dir_lib

    rows = layer_breakdown(trained_dir, runs=3, warmup=1, log=lambda *args, **kwargs: None)
    client = model_dir_lib.load(trained_dir)[0].client
    assert [row["layer"] for row in rows] == [layer.name for layer in client.layers
                                              if not isinstance(layer, keras.layers.InputLayer)]
    assert all(row["float32"] > 0 and row["int8"] > 0 for row in rows)
    assert rows[-1]["output_shape"] == list(client.output.shape[1:])
    assert len(layer_table(rows).splitlines()) == 2 + len(rows)
