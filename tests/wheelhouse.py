"""The wheels a TensorFlow-free device virtualenv installs from in the tests (no download at test time).

``bash setup.sh`` runs ``python3 -m tests.wheelhouse`` once: it downloads, from
the package index, the device dependencies of pyproject.toml into
``.cache/wheels/<platform>``, with protobuf and grpcio at their declared lower
bounds (``LOWEST``), which is what tests/packaging_test.py installs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_requirements() -> list[str]:
    """The ``dependencies`` of pyproject.toml (what ``pip install nopeek-tf`` brings)."""
    import tomllib

    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def lowest(requirements: list[str], names: tuple[str, ...] = ("protobuf", "grpcio")) -> list[str]:
    """``requirements`` with each of ``names`` pinned to its lower bound (``grpcio>=1.53.0`` -> ``grpcio==1.53.0``)."""
    pinned = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,]+)(,.*)?", requirement)
        pinned.append(f"{match.group(1)}=={match.group(2)}" if match and match.group(1) in names else requirement)
    return pinned


def wheelhouse_dir(platform: str | None = None) -> str:
    """Where the wheels of ``platform`` (default: this machine's, e.g. x86_64) are kept."""
    return os.path.join(REPO_ROOT, ".cache", "wheels", platform or os.uname().machine)


def download(platform: str | None = None) -> str:
    """Downloads the device wheels (lowest protobuf and grpcio) for ``platform``; returns the folder."""
    folder = wheelhouse_dir(platform)
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
               "-d", folder, *lowest(device_requirements()), "setuptools", "wheel"]
    if platform:
        # pip matches --platform tags exactly: every manylinux tag up to bookworm's glibc 2.36.
        for tag in [f"manylinux2014_{platform}"] + [f"manylinux_2_{minor}_{platform}" for minor in range(17, 37)]:
            command += ["--platform", tag]
        command += ["--python-version", "3.11"]
    subprocess.run(command, check=True)
    return folder


if __name__ == "__main__":
    print(f"setup: device wheels in {download(sys.argv[1] if len(sys.argv) > 1 else None)}", file=sys.stderr)
