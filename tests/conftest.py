"""Shared test set-up: quiet TensorFlow, and the repository root on sys.path."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# tf.distribute is tested on the CPU split into logical devices, which must be
# configured before TensorFlow initialises (so: here, before any test runs).
TEST_CPU_DEVICES = 4
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * TEST_CPU_DEVICES)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A small NoPeek model on ORL faces at 56x46, trained long enough to be accurate (shared)."""
    from nopeek_tf import config as config_lib
    from nopeek_tf import training

    model_dir = str(tmp_path_factory.mktemp("trained"))
    config = config_lib.TrainConfig(dataset="orl_faces", image_size=(56, 46), alpha=1.0, epochs=12,
                               batch_size=16, dcor_batch_size=50, verbose=0)
    training.train_and_evaluate(config, model_dir)
    return model_dir


@pytest.fixture(scope="session")
def exported(trained_dir, tmp_path_factory):
    """(export dir, manifest) of all four client variants of ``trained_dir`` (shared; do not modify)."""
    from export import export

    export_dir = str(tmp_path_factory.mktemp("export"))
    manifest = export.export_model(export.ExportConfig(model_dir=trained_dir, export_dir=export_dir),
                                   log=lambda *_: None)
    return export_dir, manifest


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made now."""
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=nopeek test CA", cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", "san.cnf", cwd=folder)
    return folder
