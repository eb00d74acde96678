#!/usr/bin/env bash
# Per-rank memory and bytes on the wire of every dist.shard mode on 1, 2 and 4 Gloo ranks of this
# machine, against `bitqat plan` and the collective formulas (build/bench/shard_bench; docs/benchmarks.md,
# "Sharded data parallelism"). Not a test: a measurement.
#
#   bench/shard_memory.sh [WORK_DIR] [--worlds "1 2 4"] [--modes "none optimizer gradients parameters"]
#
# The model: configs/quickstart.yaml's ternary byte-level LM widened to dim 1024, 8 blocks, relu2 FFN
# 4096 (101.0M parameters, 16 heads), trained 4 steps of 1 x 16 tokens per rank on one thread each, so
# that parameters, gradients and optimizer state dominate; its baseline, the same runs of a tiny
# model (dim 64, 2 blocks). Parameters mode also runs at lambda_w 0.5, where weights gather in float32.
# Every rank runs with MALLOC_MMAP_THRESHOLD_=65536 (glibc): a freed tensor's pages go back at once,
# so the resident set follows the live memory instead of what the heap kept (SHARD_BENCH_MALLOC=default
# leaves glibc's adaptive threshold on). Writes WORK_DIR/results/*.json (one per rank and run) and
# prints the report; runs already in results/ are not run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="/tmp/bitqat_shard_memory"
worlds="1 2 4"
modes="none optimizer gradients parameters"
while [ $# -gt 0 ]; do
  case "$1" in
    --worlds) worlds="${2:?--worlds needs a value}"; shift 2 ;;
    --modes) modes="${2:?--modes needs a value}"; shift 2 ;;
    *) work="$1"; shift ;;
  esac
done
build="${BITQAT_BUILD:-$root/build}"
bin="$build/bench/shard_bench"
[ -x "$bin" ] || { echo "shard_memory: $bin is missing: build first (cmake --build build --target shard_bench)" >&2; exit 1; }
mkdir -p "$work/results" "$work/logs"
if [ ! -f "$work/text.txt" ]; then
  # Any text does: the numbers measured depend on the shapes only.
  for i in $(seq 1 4000); do echo "In the beginning was the word, and the word was with the cat $((i % 17))."; done \
    > "$work/text.txt"
fi
if [ "${SHARD_BENCH_MALLOC:-}" != default ]; then export MALLOC_MMAP_THRESHOLD_=65536; fi

common=(--set "data.path=$work/text.txt" --set "run.dir=$work/runs" --set train.steps=4 --set train.batch_size=1
        --set data.seq_len=16 --set model.max_seq_len=16 --set train.log_every=1 --set train.eval_every=0
        --set train.eval_batches=1 --set checkpoint.every=0 --set checkpoint.keep_last=1
        --set optim.lr.warmup_steps=1 --set device.type=cpu --set device.threads=1 --set dist.timeout_s=900)
big=(--set model.dim=1024 --set model.n_layers=8 --set model.n_heads=16 --set model.n_kv_heads=16
     --set model.ffn_dim=4096)
tiny=(--set model.dim=64 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=4
      --set model.ffn_dim=128)

one() {  # one() TAG WORLD MODE [--set ...]: a run on WORLD ranks, unless its results exist
  local tag="$1" world="$2" mode="$3"
  shift 3
  if [ -f "$work/results/$tag.rank0.json" ]; then return; fi
  echo "[shard_memory] $tag: dist.shard $mode on $world rank(s)" >&2
  rm -rf "$work/runs/$tag"
  BITQAT_BIN="$bin" "$root/launch/local.sh" "$world" run "$root/configs/quickstart.yaml" --tag "$tag" \
    --out "$work/results" "${common[@]}" --set "run.name=$tag" --set "dist.shard=$mode" "$@" \
    > "$work/logs/$tag.log" 2>&1 || { echo "shard_memory: $tag failed, see $work/logs/$tag.log" >&2; exit 1; }
  rm -rf "$work/runs/$tag"  # its checkpoint
}

for world in $worlds; do
  for mode in $modes; do
    one "tiny-$mode-w$world" "$world" "$mode" "${tiny[@]}"
    one "$mode-w$world" "$world" "$mode" "${big[@]}"
  done
  if [[ " $modes " == *" parameters "* ]] && [ "$world" -gt 1 ]; then
    lambda=(--set 'quant.lambda_w={kind: constant, value: 0.5}')
    one "tiny-parameters-w$world-lambda0.5" "$world" parameters "${tiny[@]}" "${lambda[@]}"
    one "parameters-w$world-lambda0.5" "$world" parameters "${big[@]}" "${lambda[@]}"
  fi
done
echo "commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . 2>/dev/null || echo ' (modified)'), $(nproc) CPUs, MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-glibc default}"
"$bin" report "$work/results"
