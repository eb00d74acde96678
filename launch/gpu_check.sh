#!/usr/bin/env bash
# The whole GPU check in one short call on the lent GPU machine, from the prebuilt .gpu-bundle/
# (launch/gpu_bundle.sh), no build, within 6 minutes of wall time:
#   0. the mma probe: the real mma.sync m16n8k32 against the fragment table the CPU harness emulates
#      (cuda/mma_m16n8k32.hpp), the first thing a GPU confirms;
#   1. the GPU tests (kernels against the CPU references, the large grid, the training path);
#   2. compute-sanitizer memcheck over the kernel tests with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that
#      a read past a tensor inside an allocator segment is seen; then racecheck and synccheck on two
#      tiny shapes (the hardware's shared-memory hazards and barrier use, which the CPU harness
#      models but cannot observe);
#   3. the benchmarks, the kernels' first (ceilings measured in the same run; every kernel plan on every
#      shape, the dispatched one against cuBLAS bf16; the dispatch table derived from them by
#      tools/dispatch_table.py; GPU memory);
#   4. NCCL training runs of configs/quickstart.yaml: world size 1, then world size 1 with
#      dist.shard parameters (ZeRO-3: NCCL's all-gather and reduce-scatter of device tensors), then,
#      on a machine with two GPUs or more, 2 ranks with dist.shard parameters (launch/local.sh).
# Results in $OUT (8 files): <device>-<date>.md (tables), <device>-<date>.json (device,
# driver, date, commit, ceilings, `kernels` [{M, N, K, us, us_cublas_bf16, speedup_vs_bf16,
# floor_fraction, ...}], memory, steps), tests.log, memcheck.log (memcheck, racecheck, synccheck),
# bench.log, nccl.log, device.txt.
# Copy the .md and .json into bench/results/.
# If the prebuilt binaries do not start there, it builds only the GPU targets (needs .gpu-debs/ from
# launch/gpu_debs.sh carried too) and says so. Without a GPU it stops at once (dry run, exit 0).
#   device run: launch/gpu_check.sh     (carry: [".gpu-bundle"], optionally ".gpu-debs")
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${BITQAT_BUNDLE:-$root/.gpu-bundle}"
out="${OUT:-$root/gpu-results}"
py="${TORCH_PYTHON:-/opt/torch/.venv/bin/python}"
budget="${BITQAT_CHECK_SECONDS:-355}"
start=$SECONDS

if [ "${BITQAT_GPU_CHECK_DRY:-0}" = 1 ] || ! command -v nvidia-smi > /dev/null 2>&1 ||
  ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check: no GPU on this machine: dry run, nothing was run (bundle: $bundle$([ -d "$bundle" ] || echo ', absent'))."
  echo "gpu_check: on the GPU machine: launch/gpu_bundle.sh here, then the device tool with carry [\".gpu-bundle\"]."
  exit 0
fi

mkdir -p "$out"
left() { echo $((budget - (SECONDS - start))); }
# step NAME LOG SECONDS CMD...: runs CMD with a timeout of at most SECONDS (and what the budget leaves),
# appending to LOG; records NAME's status for the summary.
declare -A status
step() {
  local name="$1" log="$2" want="$3"
  shift 3
  local t
  t="$(left)"
  [ "$t" -gt "$want" ] && t="$want"
  if [ "$t" -lt 5 ]; then
    status[$name]="skipped (time budget spent)"
    echo "[$name] skipped: the 6-minute budget is spent" >> "$out/$log"
    return
  fi
  echo "[$name] $(date -u +%T) timeout ${t}s: $*" >> "$out/$log"
  timeout --kill-after=5 "$t" "$@" >> "$out/$log" 2>&1
  local rc=$?
  case $rc in
    0) status[$name]="passed" ;;
    124 | 137) status[$name]="TIMED OUT after ${t}s" ;;
    *) status[$name]="FAILED (exit $rc)" ;;
  esac
  echo "[$name] exit $rc after $((SECONDS - start))s total" >> "$out/$log"
}

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
slug="$(echo "$gpu" | tr 'A-Z' 'a-z' | sed 's/^nvidia //; s/[^a-z0-9].*//')"
day="$(date -u +%Y-%m-%d)"
commit="$(cat "$bundle/COMMIT" 2>/dev/null || git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
{
  date -u
  nvidia-smi
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "commit $commit"
  cat "$bundle/MANIFEST" 2>/dev/null
} > "$out/device.txt" 2>&1

torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
nv_libs="$(ls -d "$(dirname "$torch_lib")"/../nvidia/*/lib 2>/dev/null | tr '\n' ':')"
export LD_LIBRARY_PATH="$bundle/lib:$torch_lib:$nv_libs${LD_LIBRARY_PATH:-}"
bin="$bundle/bin"
built=prebuilt
if ! "$bin/cuda_reference_tests" --gtest_list_tests > /dev/null 2>> "$out/device.txt" ||
  ! "$bin/bitlinear_ops_tests" --gtest_list_tests > /dev/null 2>> "$out/device.txt"; then
  echo "gpu_check: the prebuilt binaries do not start here (see device.txt); falling back to a minimal build" |
    tee -a "$out/device.txt"
  built="FALLBACK BUILD (prebuilt binaries did not start)"
  prefix="$root/.gpu-prefix"
  mkdir -p "$prefix"
  for f in "$root"/.gpu-debs/*.deb; do [ -f "$f" ] && dpkg -x "$f" "$prefix"; done
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
  tprefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  step build device.txt 240 bash -c "cmake -S '$root' -B '$root/build-gpu' -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH='$tprefix;$prefix/usr' -DPython3_EXECUTABLE='$py' -DBITQAT_BUILD_BENCH=ON &&
    cmake --build '$root/build-gpu' --parallel \$(nproc) --target bitlinear_ops_tests cuda_reference_tests models_tests \
      w158a8_bench bitqat"
  mkdir -p "$root/build-gpu/flat"
  for b in tests/bitlinear/ops/bitlinear_ops_tests tests/cuda/cuda_reference_tests tests/models/models_tests \
    bench/w158a8_bench bitqat; do
    ln -sf "$root/build-gpu/$b" "$root/build-gpu/flat/$(basename "$b")"
  done
  bin="$root/build-gpu/flat"
fi

# 0. The mma fragment table against the real instruction.
step mma_probe tests.log 20 "$bin/cuda_reference_tests" --gtest_filter='MmaFragments.*'
# 1. The kernels' timings first (every candidate plan on every shape: the dispatch table's input).
bdir="$(mktemp -d)"
step bench_kernels bench.log 150 "$bin/w158a8_bench" kernels "$bdir"
# 2. GPU tests (the CPU ones run too: they are quick), and decoding through a CUDA graph.
step tests tests.log 110 "$bin/bitlinear_ops_tests"
step generate_graph tests.log 30 "$bin/models_tests" --gtest_filter='Generate.*'
step reference_tests tests.log 20 "$bin/cuda_reference_tests"
# 2. memcheck over the kernel tests except the large grid, only our kernels instrumented.
kernels='gemv_|mma_kernel|reduce_kernel|expand_kernel|epilogue_kernel|quantize_rows_kernel|rms_norm_kernel|pack_codes_kernel|weight_codes_kernel|group_sums_kernel|tensor_'
step memcheck memcheck.log 100 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
  --error-exitcode 9 --kernel-regex kns="$kernels" "$bin/bitlinear_ops_tests" \
  --gtest_filter='Shapes/W158A8Gpu*:W158A8Gpu*:W158A8NonFinite*:-W158A8GpuGrid*'
if grep -q -i "unrecognized\|invalid option\|unknown option" "$out/memcheck.log"; then
  step memcheck memcheck.log 100 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
    --error-exitcode 9 "$bin/bitlinear_ops_tests" --gtest_filter='Shapes/W158A8Gpu*:W158A8NonFinite*'
fi
# racecheck and synccheck on M 3 / N 65 / K 100 (GEMV) and M 17 / N 65 / K 130 (GEMM), all scale kinds,
# and every kernel plan on small shapes.
tiny='Shapes/W158A8Gpu.KernelsEqualTheReferences/44:Shapes/W158A8Gpu.KernelsEqualTheReferences/101:W158A8GpuPlans.*'
step racecheck memcheck.log 30 compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
  "$bin/bitlinear_ops_tests" --gtest_filter="$tiny"
step synccheck memcheck.log 30 compute-sanitizer --tool synccheck --error-exitcode 9 \
  "$bin/bitlinear_ops_tests" --gtest_filter="$tiny"
grep -E "ERROR SUMMARY|Invalid __global__|RACECHECK SUMMARY" "$out/memcheck.log" | sort | uniq -c | head -20 >> "$out/memcheck.log"
# 3. memory.
step bench_memory bench.log 40 "$bin/w158a8_bench" memory "$bdir"
# 4. NCCL with world size 1 (NCCL refuses two ranks on one GPU): the whole process-group path.
ndir="$(mktemp -d)"
for i in $(seq 400); do echo "In the beginning God created the heaven and the earth. $i"; done > "$ndir/text.txt"
step nccl nccl.log 60 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
  MASTER_PORT=29517 "$bin/bitqat" train "$bundle/configs/quickstart.yaml" --set device.type=cuda \
  --set dist.backend=nccl --set data.path="$ndir/text.txt" --set run.dir="$ndir" --set run.name=nccl1 \
  --set train.steps=20 --set train.log_every=5 --set train.eval_every=0 --set checkpoint.every=10 \
  --set dist.bucket_mb=0.5
# The same with every parameter sharded: the gathers and reduce-scatters of dist.shard parameters on NCCL.
step nccl_shard nccl.log 60 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
  MASTER_PORT=29518 "$bin/bitqat" train "$bundle/configs/quickstart.yaml" --set device.type=cuda \
  --set dist.backend=nccl --set data.path="$ndir/text.txt" --set run.dir="$ndir" --set run.name=nccl1_shard \
  --set train.steps=20 --set train.log_every=5 --set train.eval_every=0 --set checkpoint.every=10 \
  --set dist.shard=parameters
# Two ranks on two GPUs (NCCL needs one GPU per rank), when the machine has them.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  step nccl_shard2 nccl.log 90 env BITQAT_BIN="$bin/bitqat" MASTER_PORT=29519 "$root/launch/local.sh" 2 train \
    "$bundle/configs/quickstart.yaml" --set device.type=cuda --set dist.backend=nccl \
    --set data.path="$ndir/text.txt" --set run.dir="$ndir" --set run.name=nccl2_shard --set train.steps=20 \
    --set train.log_every=5 --set train.eval_every=0 --set checkpoint.every=10 --set dist.shard=parameters
else
  status[nccl_shard2]="skipped (one GPU)"
fi
# 5. the QAT training step benchmark, if time remains.
step bench_train bench.log 60 "$bin/w158a8_bench" train "$bdir"

# Results: markdown and JSON.
pyres="$py"
[ -x "$pyres" ] || pyres=python3
summary="$(for k in build mma_probe tests generate_graph reference_tests memcheck racecheck synccheck bench_kernels bench_memory nccl nccl_shard nccl_shard2 bench_train; do
  [ -n "${status[$k]:-}" ] && printf '%s=%s\n' "$k" "${status[$k]}"
done)"
GPU="$gpu" DRIVER="$driver" DAY="$day" COMMIT="$commit" BUILT="$built" SUMMARY="$summary" BDIR="$bdir" \
  OUTBASE="$out/$slug-$day" WALL="$((SECONDS - start))" "$pyres" - << 'PYEOF'
import csv, json, os
def run():
    e = os.environ
    res = {"device": e["GPU"], "driver": e["DRIVER"], "date": e["DAY"], "commit": e["COMMIT"],
           "binaries": e["BUILT"], "wall_s": int(e["WALL"]),
           "steps": dict(l.split("=", 1) for l in e["SUMMARY"].splitlines() if "=" in l),
           "ceilings": None, "kernels": [], "memory_gpu": [], "train_step": []}
    kj = os.path.join(e["BDIR"], "kernels.json")
    if os.path.exists(kj):
        k = json.load(open(kj))
        res["ceilings"], res["kernels"] = k["ceilings"], k["kernels"]
        res["candidates"] = k.get("candidates", [])
    for key, name in (("memory_gpu", "memory_gpu.csv"), ("train_step", "train_step.csv")):
        p = os.path.join(e["BDIR"], name)
        if os.path.exists(p):
            res[key] = list(csv.DictReader(open(p)))
    json.dump(res, open(e["OUTBASE"] + ".json", "w"), indent=1)
    md = [f"# {res['device']}, {res['date']}, commit {res['commit']}", "",
          f"driver {res['driver']}; binaries: {res['binaries']}; wall {res['wall_s']} s; command: launch/gpu_check.sh", ""]
    md += [f"- {k}: {v}" for k, v in res["steps"].items()]
    c = res["ceilings"]
    if c:
        md += ["", f"Measured ceilings: copy {c['copy_bytes_per_s']/1e9:.0f} GB/s, bf16 matmul "
               f"{c['bf16_flop_per_s']/1e12:.0f} TFLOP/s, int8 matmul {c['int8_op_per_s']/1e12:.0f} TOP/s", "",
               "| M | N | K | us (with act. quant) | matmul only us | cuBLAS bf16 us | speed-up | floor fraction |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['M']} | {r['N']} | {r['K']} | {r['us']:.2f} | {r['us_matmul_only']:.2f} | {r['us_cublas_bf16']:.2f} "
               f"| {r['speedup_vs_bf16']:.2f}x | {100*r['floor_fraction']:.0f}% |" for r in res["kernels"]]
    if res.get("candidates"):
        bf16 = {(r["M"], r["N"], r["K"]): r["us_cublas_bf16"] for r in res["kernels"]}
        best = {}
        for c in res["candidates"]:
            key = (c["M"], c["N"], c["K"])
            if key not in best or c["us"] < best[key]["us"]:
                best[key] = c
        md += ["", "Fastest plan per shape (activation quantization included; the dispatch table's input):", "",
               "| M | N | K | plan | us | cuBLAS bf16 us | speed-up | floor fraction |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {m} | {n} | {kk} | {c['kernel']} x {c['splits']} | {c['us']:.2f} | {bf16.get((m, n, kk), 0):.2f} "
               f"| {bf16.get((m, n, kk), 0) / c['us']:.2f}x | {100 * c['floor_fraction']:.0f}% |"
               for (m, n, kk), c in sorted(best.items())]
    for key in ("memory_gpu", "train_step"):
        if res[key]:
            cols = list(res[key][0].keys())
            md += ["", f"{key}:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            md += ["| " + " | ".join(r[c] for c in cols) + " |" for r in res[key]]
    open(e["OUTBASE"] + ".md", "w").write("\n".join(md) + "\n")
    print("\n".join(md))
run()
PYEOF
# The dispatch table these measurements give (commit it with tools/dispatch_table.py once the results
# file is in bench/results/).
if [ -f "$out/$slug-$day.json" ]; then
  { echo; echo "Dispatch table (tools/dispatch_table.py):"; echo; echo '```'
    "$pyres" "$root/tools/dispatch_table.py" --from "$out/$slug-$day.json" --out - 2>&1; echo '```'; } >> "$out/$slug-$day.md"
fi
echo "gpu_check: done in $((SECONDS - start)) s; results in $out"
grep -h "FAILED\|tests, listed below\|PASSED" "$out/tests.log" | tail -12
case "$summary" in *FAILED* | *"TIMED OUT"*) exit 1 ;; esac
exit 0
