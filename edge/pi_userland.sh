#!/usr/bin/env bash
# A Raspberry Pi's userland on this machine: Raspberry Pi OS is Debian bookworm for arm64, so this builds a
# Debian bookworm arm64 root file system with debootstrap and runs it under qemu-user emulation (it is
# emulation: times are this CPU's emulating an arm64 one, not a Pi's speed).
#
#   bash edge/pi_userland.sh build [ROOTFS]          # once: the root file system, a venv with the device
#                                                    # install of nopeek-tf (no TensorFlow); about 4 minutes
#   bash edge/pi_userland.sh run ROOTFS COMMAND...   # a command inside, e.g. /opt/nopeek/bin/nopeek-edge ...
#
# ROOTFS defaults to .cache/pi-rootfs inside the checkout. Needs root (debootstrap, chroot, binfmt_misc) and
# Debian's debootstrap, qemu-user-static and binfmt-support (installed here when apt is available).
# The device's wheels (aarch64) are downloaded on this machine (python3 -m tests.wheelhouse aarch64) and
# installed inside with pip --no-index; the project's own wheel is built from this checkout.
# On a real Pi (Raspberry Pi OS 64-bit), the same install is:
#   python3 -m venv ~/nopeek && ~/nopeek/bin/pip install nopeek_tf-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."

command=${1:?usage: bash edge/pi_userland.sh build [ROOTFS] | run ROOTFS COMMAND...}
ROOTFS=$(realpath -m "${2:-.cache/pi-rootfs}")
VENV=/opt/nopeek

enable_emulation() {
  if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
      || ! command -v update-binfmts >/dev/null; then
    echo "pi_userland: installing debootstrap, qemu-user-static and binfmt-support" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support >/dev/null
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  update-binfmts --enable qemu-aarch64 2>/dev/null || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "pi_userland: error: arm64 emulation is not registered (update-binfmts --enable qemu-aarch64)" >&2
    exit 1
  fi
}

# /proc and /dev are mounted only while a command runs inside: a bind-mounted /dev left behind would let a
# later rm -rf of the checkout delete the host's device nodes.
mount_system() {
  trap unmount_system EXIT
  mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
  mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
}

unmount_system() {
  for point in "$ROOTFS/dev" "$ROOTFS/proc"; do
    if mountpoint -q "$point"; then umount "$point" || umount -l "$point"; fi
  done
}

build() {
  enable_emulation
  if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    echo "pi_userland: debootstrap bookworm arm64 into $ROOTFS (about 3 minutes)" >&2
    rm -rf "$ROOTFS.partial"
    debootstrap --arch=arm64 --variant=minbase --include=python3-venv,python3-pip bookworm "$ROOTFS.partial" \
      http://deb.debian.org/debian >/dev/null
    mv "$ROOTFS.partial" "$ROOTFS"
  fi
  mount_system
  echo "pi_userland: the device's aarch64 wheels and this checkout's wheel" >&2
  wheels=$(python3 -m tests.wheelhouse aarch64 2>&1 | sed -n 's/^setup: device wheels in //p')
  rm -rf "$ROOTFS/opt/wheels" && mkdir -p "$ROOTFS/opt/wheels"
  cp "$wheels"/*.whl "$ROOTFS/opt/wheels/"
  build_dir=$(mktemp -d)
  (cd "$build_dir" && python3 -m pip wheel -q --no-deps --no-build-isolation -w "$ROOTFS/opt/wheels" "$OLDPWD")
  rm -rf "$build_dir"
  echo "pi_userland: python3 -m venv $VENV and pip install nopeek-tf inside (emulated)" >&2
  chroot "$ROOTFS" python3 -m venv "$VENV"
  chroot "$ROOTFS" "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --find-links /opt/wheels \
    nopeek-tf  # protobuf and grpcio at their lowest supported versions: the only ones in the wheelhouse
  chroot "$ROOTFS" "$VENV/bin/python" -c \
    "import platform, importlib.util as u; assert u.find_spec('tensorflow') is None; print('pi_userland: ready:', platform.machine(), platform.python_version(), 'no TensorFlow')"
}

case "$command" in
  build) build ;;
  run)
    shift 2
    enable_emulation
    mount_system
    chroot "$ROOTFS" "$@"
    ;;
  *) echo "usage: bash edge/pi_userland.sh build [ROOTFS] | run ROOTFS COMMAND..." >&2; exit 2 ;;
esac
