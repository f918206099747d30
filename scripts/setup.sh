#!/usr/bin/env bash
# Creates or refreshes ./.venv with the pinned stack (and libtpu, for compile-only TPU targets)
# and installs the Debian Fashion-MNIST files.
# Idempotent: a second run only re-installs when setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# The embedded default dataset: Debian's dataset-fashion-mnist (real data, no network at run time).
FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "[setup] installing Debian package dataset-fashion-mnist"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  }
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

stamp=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "[setup] installing simlap[train,test] into .venv (pinned; takes about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[train,test]"
  # Data-only distributions, without their dependencies and off sys.path (setup.py's
  # DATA_PACKAGES says why); copies an older set-up put on sys.path are removed.
  data=$(sed -n '/^DATA_PACKAGES = \[/,/^\]/s/^ *"\([^"]*\)",.*/\1/p' setup.py)
  names=$(printf '%s\n' $data | sed 's/==.*//')
  .venv/bin/python -m pip uninstall -q -y $names 2>/dev/null || true
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/share/simlap/packages $data
  # libtpu (about 210 MB) lets simlap.aot compile for TPU slices on this host. Its wheels are
  # Linux x86-64 only; elsewhere simlap.aot and its tests say that it is missing.
  echo "[setup] installing simlap[tpu] (libtpu, for compile-only TPU targets)"
  .venv/bin/python -m pip install -q -e ".[tpu]" ||
    echo "[setup] libtpu is not available for $(uname -sm): simlap.aot cannot compile for TPUs"
  echo "$stamp" > .venv/.setup-stamp
fi
