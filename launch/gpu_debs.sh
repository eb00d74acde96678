#!/usr/bin/env bash
# Fills the git-ignored .gpu-debs/ with the Debian packages the GPU machine's image lacks
# (yaml-cpp, spdlog, fmt, GoogleTest, nlohmann-json, zlib and libpng headers), for launch/gpu_run.sh to unpack there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.gpu-debs"
cd "$root/.gpu-debs"
apt-get update -qq
apt-get download libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 \
  libgtest-dev libgmock-dev googletest nlohmann-json3-dev zlib1g-dev zlib1g libpng-dev libpng16-16
ls -1 "$root/.gpu-debs"
