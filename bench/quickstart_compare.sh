#!/usr/bin/env bash
# Throughput of the quickstart in bitqat against the same model written as a PyTorch user would
# (bench/quickstart_pytorch.py), eager and under torch.compile, in one invocation: same model,
# batch (16 x 128 bytes), optimizer, threads and number of timed steps. Each trainer prints the
# median tokens/s over the timed steps after its warm-up; this script prints them and the ratios,
# then does the same for the full-precision twin (configs/quickstart_fp.yaml). With --repeat N the
# three trainers run N times in turn (bitqat, eager, compile, bitqat, ...) and the summary gives, per
# trainer, the median tokens/s of the N runs with their range, and the median of the N per-round
# ratios: on a machine whose speed drifts, a ratio of neighbouring runs is the figure to quote.
#
#   bench/quickstart_compare.sh [--threads 2] [--warmup 20] [--steps 60] [--repeat 1] [--only ternary|fp]
#
# Needs: a build (build/bench/train_bench), the venv (.venv) and the KJV text (launch/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 warmup=20 steps=60 repeat=1 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    *) echo "quickstart_compare.sh: unknown argument '$1' (expected --threads, --warmup, --steps, --repeat, --only)" >&2; exit 2 ;;
  esac
done
if ! [[ "$steps" =~ ^[0-9]+$ ]] || [ "$steps" -lt 50 ]; then echo "quickstart_compare.sh: --steps $steps: expected an integer >= 50 (timed steps)" >&2; exit 2; fi
if ! [[ "$repeat" =~ ^[0-9]+$ ]] || [ "$repeat" -lt 1 ] || [ "$repeat" -gt 50 ]; then
  echo "quickstart_compare.sh: --repeat $repeat: expected an integer from 1 to 50" >&2; exit 2
fi
case "$only" in ""|ternary|fp) ;; *) echo "quickstart_compare.sh: --only $only: expected ternary or fp" >&2; exit 2 ;; esac
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
  for _ in $(seq "$repeat"); do
    "$bench" --config "$cfg" --warmup "$warmup" --steps "$steps" --threads "$threads" | tee -a "$out"
    "$py" bench/quickstart_pytorch.py $fp --threads "$threads" --warmup "$warmup" --steps "$steps" | tee -a "$out"
    "$py" bench/quickstart_pytorch.py $fp --compile --threads "$threads" --warmup "$warmup" --steps "$steps" | tee -a "$out"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
# Rounds of three: bitqat, eager, compile. Per (model, trainer): tokens/s of each round and the ratio
# bitqat / this within the round.
runs, ratios, order = {}, {}, []
for i in range(0, len(rows), 3):
    group = rows[i:i + 3]
    kind = "fp32" if "fp" in group[0]["config"] else "ternary"
    ours = group[0]["median_tokens_per_s"]
    for r in group:
        key = (kind, r["trainer"])
        if key not in runs:
            order.append(key)
        runs.setdefault(key, []).append(r["median_tokens_per_s"])
        ratios.setdefault(key, []).append(ours / r["median_tokens_per_s"])
print(f"{'model':8} {'trainer':24} {'runs':>4} {'tokens/s':>10} {'(range)':>17} {'bitqat / this':>14} {'(range)':>13}")
for key in order:
    t, q = runs[key], ratios[key]
    print(f"{key[0]:8} {key[1]:24} {len(t):4} {statistics.median(t):10.0f} {min(t):8.0f}-{max(t):<8.0f} "
          f"{statistics.median(q):14.2f} {min(q):6.2f}-{max(q):<6.2f}")
PY
