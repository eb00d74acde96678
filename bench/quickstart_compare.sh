#!/usr/bin/env bash
# Throughput of the quickstart in bitqat against the same model written as a PyTorch user would
# (bench/quickstart_pytorch.py), eager and under torch.compile, in one invocation: same model,
# batch (16 x 128 bytes), optimizer, threads and number of timed steps. Each trainer prints the
# median tokens/s over the timed steps after its warm-up; this script prints them and the ratios,
# then does the same for the full-precision twin (configs/quickstart_fp.yaml).
#
#   bench/quickstart_compare.sh [--threads 2] [--warmup 20] [--steps 60] [--only ternary|fp]
#
# Needs: a build (build/bench/train_bench), the venv (.venv) and the KJV text (launch/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 warmup=20 steps=60 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "quickstart_compare.sh: unknown argument '$1' (expected --threads, --warmup, --steps, --only)" >&2; exit 2 ;;
  esac
done
if [ "$steps" -lt 50 ]; then echo "quickstart_compare.sh: --steps $steps: at least 50 timed steps" >&2; exit 2; fi
bench=build/bench/train_bench py=.venv/bin/python
for f in "$bench" "$py" data/cache/kjv.txt; do
  [ -e "$f" ] || { echo "quickstart_compare.sh: $f is missing: run launch/setup.sh first" >&2; exit 2; }
done
export OMP_NUM_THREADS="$threads"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in ternary fp; do
  [ -z "$only" ] || [ "$only" = "$kind" ] || continue
  if [ "$kind" = fp ]; then cfg=configs/quickstart_fp.yaml fp=--fp; else cfg=configs/quickstart.yaml fp=""; fi
  "$bench" --config "$cfg" --warmup "$warmup" --steps "$steps" --threads "$threads" | tee -a "$out"
  "$py" bench/quickstart_pytorch.py $fp --threads "$threads" --warmup "$warmup" --steps "$steps" | tee -a "$out"
  "$py" bench/quickstart_pytorch.py $fp --compile --threads "$threads" --warmup "$warmup" --steps "$steps" | tee -a "$out"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"{'model':8} {'trainer':24} {'tokens/s':>10} {'bitqat / this':>14}")
for i in range(0, len(rows), 3):
    group = rows[i:i + 3]
    kind = "fp32" if "fp" in group[0]["config"] else "ternary"
    ours = group[0]["median_tokens_per_s"]
    for r in group:
        print(f"{kind:8} {r['trainer']:24} {r['median_tokens_per_s']:10.0f} {ours / r['median_tokens_per_s']:14.2f}")
PY
