#!/usr/bin/env bash
# Builds the GPU-facing binaries here (no GPU needed) and collects them, stripped, with the shared
# libraries the GPU machine's image lacks (yaml-cpp, spdlog, fmt, ...) into the git-ignored
# .gpu-bundle/ (at most 56 MB: the device tool carries 64 MiB with the working tree, which is about
# 2.5 MB), for launch/gpu_check.sh to run there without building.
# Torch, its CUDA libraries and glibc / libstdc++ are not copied: the GPU machine has the same torch
# 2.11.0+cu130 under /opt/torch/.venv, found through LD_LIBRARY_PATH.
#   launch/gpu_bundle.sh            then device run: launch/gpu_check.sh   (carry: [".gpu-bundle"])
# Env: BITQAT_BUILD (default build/), BITQAT_BUNDLE (default .gpu-bundle/), BITQAT_JOBS (default 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BITQAT_BUILD:-$root/build}"
bundle="${BITQAT_BUNDLE:-$root/.gpu-bundle}"
limit_mb=56
bins=(tests/bitlinear/ops/bitlinear_ops_tests tests/cuda/cuda_reference_tests tests/models/models_tests bench/w158a8_bench
      bitqat)
targets=(bitlinear_ops_tests cuda_reference_tests models_tests w158a8_bench bitqat)

if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "gpu_bundle: no build in $build; configure it first (README.md, launch/setup.sh)" >&2
  exit 1
fi
# The kernels must be compiled for the GPU machine's architecture (H200: sm_90a) and sm_80.
archs="$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt")"
grep -q "bitqat_cuda PROPERTIES CUDA_ARCHITECTURES \"80-real;90a-real\"" "$root/cuda/CMakeLists.txt" || {
  echo "gpu_bundle: cuda/CMakeLists.txt no longer builds for 80-real;90a-real (cache: $archs)" >&2
  exit 1
}
nice -n 10 cmake --build "$build" --parallel "${BITQAT_JOBS:-2}" --target "${targets[@]}"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/configs"
for b in "${bins[@]}"; do
  install -m 755 "$build/$b" "$bundle/bin/$(basename "$b")"
  strip --strip-unneeded "$bundle/bin/$(basename "$b")"
  if readelf -d "$bundle/bin/$(basename "$b")" | grep -q 'libcuda\.so'; then
    echo "gpu_bundle: $b links the CUDA driver library; it would not start without a GPU" >&2
    exit 1
  fi
done
cp "$root/configs/quickstart.yaml" "$bundle/configs/"

# Shared libraries: everything the binaries resolve here except torch (and the nvidia-* wheels it
# brings), the CUDA toolkit's and the C / C++ runtime (present on every image).
torch_cmake="$(sed -n 's/^Torch_DIR:PATH=//p' "$build/CMakeCache.txt")"  # .../site-packages/torch/share/cmake/Torch
site="$(cd "$torch_cmake/../../../.." && pwd)"                           # .../site-packages
skip='^(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux-x86-64|linux-vdso|libcuda|libutil)\.so'
for b in "$bundle"/bin/*; do
  ldd "$b" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  case "$path" in "$site"/* | /usr/local/cuda*) continue ;; esac
  [[ "$name" =~ $skip ]] && continue
  cp -L "$path" "$bundle/lib/$name"
  strip --strip-unneeded "$bundle/lib/$name" 2>/dev/null || true
done

{
  echo "commit $(git -C "$root" rev-parse HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!.gpu-bundle' || echo -dirty)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
  echo "cuda_architectures 80-real;90a-real"
  echo "torch $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$site/torch/version.py" 2>/dev/null)"
} > "$bundle/MANIFEST"
git -C "$root" rev-parse HEAD > "$bundle/COMMIT"
(cd "$bundle" && find . -type f | sort | xargs ls -l | awk '{printf "%10d %s\n", $5, $9}') >> "$bundle/MANIFEST"

size_kb="$(du -sk "$bundle" | cut -f1)"
echo "gpu_bundle: $bundle holds $(find "$bundle" -type f | wc -l) files, $((size_kb / 1024)) MB:"
ls -l "$bundle/bin" "$bundle/lib" | grep -v '^total'
if [ "$size_kb" -gt $((limit_mb * 1024)) ]; then
  echo "gpu_bundle: $((size_kb / 1024)) MB exceeds the $limit_mb MB limit" >&2
  exit 1
fi
