#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh machine: Debian packages, the pinned LibTorch wheel in a
# git-ignored virtual environment, then configure and build. A second run on a ready machine only
# rebuilds what changed.
#
#   launch/setup.sh            install + configure + build
#   launch/setup.sh --deps     install only (no build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.11.0"
VENV="${BITQAT_VENV:-$root/.venv}"
BUILD="${BITQAT_BUILD:-$root/build}"

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev zlib1g-dev libcli11-dev libpng-dev
  dataset-fashion-mnist bible-kjv bible-kjv-text
)

log() { printf '[setup] %s\n' "$*"; }

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

py="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$py" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (LibTorch for C++, CUDA 13.0 build; about 2.7 GB)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
else
  log "torch $TORCH_VERSION present"
fi
# Python packages used only by tests of the interchange formats: safetensors and numpy write import
# fixtures; transformers (with accelerate, which its BitNet loader requires) and llama.cpp's gguf-py
# read our hf-bitnet and GGUF exports; scipy computes the Frechet distance that the image-quality
# metric's test compares with.
# Pinned, so that a fresh machine tests against the versions these tests were written for.
py_test_packages=(safetensors==0.8.0 numpy==2.4.6 transformers==5.24.0 accelerate==1.15.0 gguf==0.19.0 scipy==1.17.1)
if ! "$VENV/bin/python" - "${py_test_packages[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (a.split("==") for a in sys.argv[1:])) else 1)
PY
  log "installing ${py_test_packages[*]}"
  "$VENV/bin/pip" install -q "${py_test_packages[@]}"
fi

# The text the quickstart trains on (fast; a no-op when present).
"$root/data/prepare_kjv.sh"

[ "${1:-}" = "--deps" ] && exit 0

torch_prefix="$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
if [ ! -f "$BUILD/build.ninja" ]; then
  log "configuring $BUILD"
  cmake -S "$root" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DPython3_EXECUTABLE="$VENV/bin/python"
fi
log "building"
cmake --build "$BUILD" --parallel "$(nproc)"
log "done: $BUILD/bitqat"
