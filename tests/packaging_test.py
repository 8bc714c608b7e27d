"""pip-installing the project: the wheel's layout, the device install without TensorFlow, the full install.

The virtualenvs install from the wheel built here and from the wheels that
``bash setup.sh`` downloaded (tests/wheelhouse.py): nothing downloads now.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from tests import wheelhouse
from tests.conftest import REPO_ROOT
from tests.local_server import LocalServer

MODEL = "nopeek_orl_faces"
pytestmark = pytest.mark.slow


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project's wheel, built from this checkout without downloading (the build uses this Python's setuptools)."""
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")  # keeps build/ and *.egg-info out of the checkout
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
          REPO_ROOT], cwd=build, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (path,) = glob.glob(str(out / "nopeek_tf-*.whl"))
    return path


def _venv(path, system_site_packages=False):
    _run([sys.executable, "-m", "venv", *(["--system-site-packages"] if system_site_packages else []), str(path)])
    return str(path / "bin")


def test_the_wheel_installs_one_top_level_package_and_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"nopeek_tf"}
    for module in ("nopeek_tf/train/train.py", "nopeek_tf/export/export.py", "nopeek_tf/serving/server.py",
                   "nopeek_tf/serving/proto/batching_parameters_pb2.py", "nopeek_tf/edge/client.py",
                   "nopeek_tf/edge/proto/predict_pb2.py", "nopeek_tf/train/configs/fashion_mnist.py",
                   "nopeek_tf/core/split.py", "nopeek_tf/device/manifest.py", "nopeek_tf/training/data.py",
                   "nopeek_tf/attacks/reconstruction.py", "nopeek_tf/config/train.py", "nopeek_tf/train/split_server.py",
                   "nopeek_tf/split_learning/split_training_pb2.py", "nopeek_tf/split_learning/split_training.proto",
                   "nopeek_tf/adversary/server.py", "nopeek_tf/device/policy.py", "nopeek_tf/train/recommend.py"):
        assert module in names
    for script in ("nopeek-train", "nopeek-leakage", "nopeek-export", "nopeek-serve", "nopeek-edge",
                   "nopeek-split-server", "nopeek-split-client", "nopeek-recommend"):
        assert f"{script} = " in entry_points


def test_device_install_without_tensorflow_at_the_lowest_protobuf_and_grpcio(wheel, exported, tmp_path):
    """pip install nopeek-tf (no extra) into a fresh virtualenv: the edge client classifies over gRPC and REST."""
    folder = wheelhouse.wheelhouse_dir()
    if not os.path.isdir(folder):
        pytest.fail(f"{folder} is missing: run bash setup.sh (it downloads the device wheels once)")
    bin_dir = _venv(tmp_path / "device")
    _run([f"{bin_dir}/pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", folder,
          wheel, *[r for r in wheelhouse.lowest(wheelhouse.device_requirements()) if "==" in r]])
    versions = _run([f"{bin_dir}/python", "-c", "import google.protobuf, grpc, importlib.util; "
                     "print(google.protobuf.__version__, grpc.__version__, importlib.util.find_spec('tensorflow'))"],
                    cwd=tmp_path).stdout.split()
    assert versions == ["3.20.3", "1.53.0", "None"]

    export_dir, _ = exported
    from edge.client import EdgeClient
    from nopeek_tf.training import data
    faces = [os.path.join(data.orl_faces_dir(), "s1", "1.pgm"), os.path.join(data.orl_faces_dir(), "s7", "3.pgm")]
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)})
    try:
        for variant, transport, address in (("int8", "grpc", server.grpc), ("float32", "rest", server.rest)):
            tflite = os.path.join(export_dir, "client", f"client_{variant}.tflite")
            out = _run([f"{bin_dir}/nopeek-edge", "--tflite", tflite, "--server", address, "--transport", transport,
                        *faces], cwd=tmp_path).stdout.splitlines()
            reference = EdgeClient(tflite, server=address, transport=transport)
            for face, line in zip(faces, out):
                assert line.startswith(f"{face}: {reference.classify(face).class_name} "), (line, out)
            assert out[-2].startswith(f"2 images via {transport} ({variant} client)")
            assert out[-1].startswith("no device noise: one request may reveal up to ")  # the device's own bound
    finally:
        server.stop()
    refused = subprocess.run([f"{bin_dir}/nopeek-train", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        "error: nopeek-train needs TensorFlow, which this install does not have: pip install 'nopeek-tf[train]'"]


def test_full_install_trains_outside_the_checkout(wheel, tmp_path):
    """pip install 'nopeek-tf[train]' (TensorFlow from this machine's site-packages): nopeek-train runs from the venv."""
    bin_dir = _venv(tmp_path / "full", system_site_packages=True)
    _run([f"{bin_dir}/pip", "install", "-q", "--disable-pip-version-check", "--no-index", f"{wheel}[train]"])
    where = _run([f"{bin_dir}/python", "-c", "import nopeek_tf.train.train as m; print(m.__file__)"],
                 cwd=tmp_path).stdout.strip()
    assert where.startswith(str(tmp_path / "full")), where
    usage = subprocess.run([f"{bin_dir}/nopeek-train", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert "--dataset" in usage.stdout and "--defence" in usage.stdout, usage.stderr  # absl's --help exits 1
    _run([f"{bin_dir}/nopeek-train", "--dataset=orl_faces", "--image_size=28x23", "--epochs=1", "--batch_size=8",
          "--dcor_batch_size=20", "--defence=plain", "--model_dir=run"], cwd=tmp_path,
         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert os.path.exists(tmp_path / "run" / "metrics.json")
    # The installed split server reaches the serving package's TLS reader (nopeek_tf.serving, not serving):
    refused = subprocess.run([f"{bin_dir}/nopeek-split-server", "--dataset=orl_faces", "--ssl_config_file=missing",
                              "--model_dir=split"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: --ssl_config_file missing: "), refused.stderr


PI_ROOTFS = os.path.join(REPO_ROOT, ".cache", "pi-rootfs")


def test_edge_client_in_an_emulated_raspberry_pi_userland(wheel, exported, tmp_path):
    """Debian bookworm arm64 under qemu (edge/pi_userland.sh): the installed edge client equals this machine's."""
    if not os.path.exists(os.path.join(PI_ROOTFS, "opt", "nopeek", "bin", "nopeek-edge")):
        pytest.fail(f"no arm64 userland at {PI_ROOTFS}: run bash edge/pi_userland.sh build (needs root; about 4 minutes)")

    def inside(*command):
        return _run(["bash", os.path.join(REPO_ROOT, "edge", "pi_userland.sh"), "run", PI_ROOTFS, *command])

    shutil.copy(wheel, os.path.join(PI_ROOTFS, "opt", "wheels"))  # this checkout's code, installed without download
    inside("/opt/nopeek/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
           "--force-reinstall", f"/opt/wheels/{os.path.basename(wheel)}")
    assert inside("/opt/nopeek/bin/python", "-c", "import platform; print(platform.machine())").stdout.strip() == \
        "aarch64"

    export_dir, _ = exported
    from edge.client import EdgeClient
    from nopeek_tf.training import data
    faces = [os.path.join(data.orl_faces_dir(), f"s{person}", "1.pgm") for person in (1, 9, 17, 33)]
    job = tempfile.mkdtemp(dir=os.path.join(PI_ROOTFS, "tmp"))
    shutil.copytree(os.path.join(export_dir, "client"), os.path.join(job, "client"))
    for index, face in enumerate(faces):
        shutil.copy(face, os.path.join(job, f"face{index}.pgm"))
    inner = "/" + os.path.relpath(job, PI_ROOTFS)
    server = LocalServer({MODEL: os.path.join(export_dir, "serving", MODEL)})
    try:
        for variant, transport, address in (("int8", "grpc", server.grpc), ("float32", "rest", server.rest)):
            out = inside("/opt/nopeek/bin/nopeek-edge", "--tflite", f"{inner}/client/client_{variant}.tflite",
                         "--server", address, "--transport", transport,
                         *[f"{inner}/face{i}.pgm" for i in range(len(faces))]).stdout.splitlines()
            reference = EdgeClient(os.path.join(export_dir, "client", f"client_{variant}.tflite"), server=address,
                                   transport=transport)
            for index, face in enumerate(faces):
                assert out[index].startswith(f"{inner}/face{index}.pgm: {reference.classify(face).class_name} "), out
            print(f"emulated arm64, {variant} over {transport}: {out[-1]}")
    finally:
        server.stop()
        shutil.rmtree(job)
