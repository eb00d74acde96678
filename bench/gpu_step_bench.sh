#!/usr/bin/env bash
# One QAT step of configs/lm_gpu.yaml on a GPU against the same model in plain bf16 (quantization
# off: BitLinear with weight and activation type none is a linear layer), same tokens, batch and
# optimizer: the fully quantized step (lambda = 1, the int8 W1.58A8 path), a lambda-ramp step
# (lambda 0.5: fused fake quantization) and the bf16 step. Random llm.c shards stand in for data
# (throughput does not depend on the token values). Prints one JSON line per trainer (tokens/s over
# the timed window, peak allocated bytes) and the ratios.
#
#   bench/gpu_step_bench.sh [BIN_DIR] [--warmup 10] [--steps 30] [--batch 8]
# BIN_DIR holds train_bench (default build/bench). Ends with exit 0 and a message without a GPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/bench"
warmup=10 steps=30 batch=8
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then bin="$1"; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    *) echo "gpu_step_bench.sh: unknown argument '$1' (expected BIN_DIR, --warmup, --steps, --batch)" >&2; exit 2 ;;
  esac
done
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_step_bench.sh: no GPU here; nothing measured"; exit 0
fi
py="${TORCH_PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp" <<'PY'
import struct, sys, random
# llm.c shard: 256 int32 header (magic 20240520, version 1, token count), then uint16 tokens.
rng = random.Random(0)
for name, n in (("train_000.bin", 4_000_000), ("val_000.bin", 200_000)):
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(50257) for _ in range(n))))
PY
common=(--config "$root/configs/lm_gpu.yaml" --warmup "$warmup" --steps "$steps"
        --set "data.train=$tmp/train_*.bin" --set "data.val=$tmp/val_*.bin" --set "train.batch_size=$batch"
        --set train.grad_accum=1 --set device.type=cuda)
out="$tmp/results.jsonl"
"$bin/train_bench" "${common[@]}" | sed 's/^{/{"mode":"qat lambda=1",/' | tee -a "$out"
"$bin/train_bench" "${common[@]}" --set 'quant.lambda_w={kind: constant, value: 0.5}' \
  --set 'quant.lambda_a={kind: constant, value: 0.5}' | sed 's/^{/{"mode":"qat lambda=0.5",/' | tee -a "$out"
"$bin/train_bench" "${common[@]}" --set 'quant.weight={type: none}' --set 'quant.activation={type: none}' \
  | sed 's/^{/{"mode":"bf16",/' | tee -a "$out"
"$py" - "$out" <<'PY'
import json, sys
rows = {r["mode"]: r for r in map(json.loads, open(sys.argv[1]))}
base = rows["bf16"]["tokens_per_s"]
for mode, r in rows.items():
    print(f"{mode:18} {r['tokens_per_s']:12.0f} tok/s  {r['peak_allocated_bytes'] / 2**30:7.2f} GiB  "
          f"{r['tokens_per_s'] / base:5.2f}x bf16 (targets: lambda=1 >= 1.0x, ramp >= 0.8x)")
PY
