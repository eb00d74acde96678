#!/usr/bin/env bash
# One call on the lent GPU machine (the device tool; carry .gpu-debs): unpack the carried Debian
# packages into a prefix, build in that machine's image against its torch, run the GPU tests,
# compute-sanitizer memcheck over the kernel tests, and the benchmarks. Everything lands in $OUT.
#   device run:  launch/gpu_run.sh        (carry: [".gpu-debs"])
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
prefix="$root/.gpu-prefix"
py="${TORCH_PYTHON:-/opt/torch/.venv/bin/python}"

{ date -u; nvidia-smi; nvcc --version; "$py" -c 'import torch; print("torch", torch.__version__)'; \
  echo "commit ${BITQAT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"; } > "$out/device.txt" 2>&1

mkdir -p "$prefix"
for f in "$root"/.gpu-debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

if ! { cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
         -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DPython3_EXECUTABLE="$py" &&
       cmake --build build-gpu --parallel "$(nproc)"; } > "$out/build.log" 2>&1; then
  echo "build failed; see build.log"; tail -40 "$out/build.log"; exit 1
fi

# GPU-relevant tests (the CPU-only data tests need Debian's dataset packages, absent from this image).
ctest --test-dir build-gpu --output-on-failure \
  -R "W158A8|Reference|TernaryFormat|BitLinear|BitConv2d|Estimators|BitLM|DistContext|GradSync|DataParallel" \
  > "$out/ctest.log" 2>&1
echo "ctest exit $?" >> "$out/ctest.log"
# Data parallel over NCCL with world size 1 (NCCL refuses two ranks on one GPU): a launched
# single-rank run takes the whole process-group path (rendezvous, broadcast, bucketed all-reduce).
mkdir -p "$out/nccl"
for i in $(seq 400); do echo "In the beginning God created the heaven and the earth. $i"; done > "$out/nccl/text.txt"
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
  build-gpu/bitqat train configs/quickstart.yaml --set device.type=cuda --set dist.backend=nccl \
  --set data.path="$out/nccl/text.txt" --set run.dir="$out/nccl" --set run.name=nccl1 --set train.steps=20 \
  --set train.log_every=5 --set train.eval_every=0 --set checkpoint.every=10 --set dist.bucket_mb=0.5 \
  > "$out/nccl.log" 2>&1
echo "nccl world-1 training exit $?" >> "$out/nccl.log"
compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/bitlinear/ops/bitlinear_ops_tests \
  --gtest_filter='*Gpu*' > "$out/memcheck.log" 2>&1
echo "memcheck exit $?" >> "$out/memcheck.log"
{
  build-gpu/bench/w158a8_bench kernels "$out"
  build-gpu/bench/w158a8_bench train "$out"
  build-gpu/bench/w158a8_bench memory "$out"
} > "$out/bench.log" 2>&1
echo "bench exit $?" >> "$out/bench.log"
tail -5 "$out/ctest.log" "$out/memcheck.log" "$out/nccl.log"; cat "$out/bench.log"
