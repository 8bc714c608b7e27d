#!/usr/bin/env bash
# Installs what nopeek-tf needs on this machine: the Python packages of
# requirements.txt into the current Python, and Debian's Fashion-MNIST
# (package dataset-fashion-mnist) where apt is available.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist (sudo)" >&2
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt: --dataset=fashion_mnist will need --data_dir=<idx folder> or internet" >&2
  fi
fi

echo "setup: pip install -r requirements.txt" >&2
python3 -m pip install -q --disable-pip-version-check -r requirements.txt

# The wheels of a TensorFlow-free device install (tests/packaging_test.py installs them into a fresh
# virtualenv without downloading): the device dependencies of pyproject.toml, protobuf and grpcio at
# their lowest supported versions.
python3 -m tests.wheelhouse
