"""The library's layers (pyproject.toml's import contract) and its earlier module paths."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

from tests.conftest import REPO_ROOT as _ROOT

REPO_ROOT = pathlib.Path(_ROOT)


def _lint_imports(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layers_contract_holds(tmp_path):
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_import_up_a_layer_breaks_the_contract(tmp_path):
    for name in ("nopeek_tf", "edge"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    dcor = tmp_path / "nopeek_tf" / "core" / "dcor.py"
    dcor.write_text(dcor.read_text() + "\n\ndef _up():\n    from nopeek_tf.training import runner  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "nopeek_tf.core.dcor -> nopeek_tf.training.runner" in result.stdout


def test_earlier_module_paths_import_the_same_module_with_a_warning_naming_the_new_path():
    code = """
import importlib, warnings
pairs = [("nopeek_tf.models", "nopeek_tf.core.models"), ("nopeek_tf.manifest", "nopeek_tf.device.manifest"),
         ("nopeek_tf.privacy.evaluation", "nopeek_tf.experiments.evaluation"),
         ("nopeek_tf.privacy.attacks", "nopeek_tf.attacks.reconstruction"), ("nopeek_tf.data", "nopeek_tf.training.data")]
for old, new in pairs:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new), old
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"{old} is deprecated: import {new}" in m for m in messages), (old, messages)
import nopeek_tf
assert nopeek_tf.TrainConfig is importlib.import_module("nopeek_tf.config").TrainConfig
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stdout + result.stderr
