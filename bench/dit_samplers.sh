#!/usr/bin/env bash
# Sample quality of a trained DiT run against the sampler settings: integration steps x guidance
# weight x solver, each scored by `bitqat eval` (Frechet distance and classifier accuracy of N
# generated images under the Fashion-MNIST classifier run, docs/images.md). Prints one markdown
# table row per setting, with the wall time of the whole eval (the held-out loss included, the same
# for every row). Not a test: a measurement.
#
#   bench/dit_samplers.sh RUN_DIR CLASSIFIER_RUN [--samples N] [--steps "10 25 50"] [--cfg "1.5 2 3 4"]
#                         [--solvers "euler heun"] [--bin build/bitqat]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="${1:?usage: bench/dit_samplers.sh RUN_DIR CLASSIFIER_RUN [options]}"
clf="${2:?usage: bench/dit_samplers.sh RUN_DIR CLASSIFIER_RUN [options]}"
shift 2
samples=1000 steps="10 25 50" cfgs="1.5 2 3 4" solvers="euler heun" bin="$root/build/bitqat"
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) samples="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --cfg) cfgs="$2"; shift 2 ;;
    --solvers) solvers="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "bench/dit_samplers.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
echo "| solver | steps | guidance | Frechet distance ($samples samples) | classifier accuracy | eval wall time (s) |"
echo "|---|---|---|---|---|---|"
for solver in $solvers; do
  for s in $steps; do
    for w in $cfgs; do
      t0=$(date +%s.%N)
      out="$("$bin" eval "$run" --json --samples "$samples" --steps "$s" --cfg "$w" --solver "$solver" --classifier "$clf")"
      t1=$(date +%s.%N)
      python3 -c 'import json, sys
j = json.loads(sys.argv[1])
print("| %s | %s | %s | %.1f | %.3f | %.1f |" % (sys.argv[2], sys.argv[3], sys.argv[4], j["frechet_distance"], j["classifier_accuracy"], float(sys.argv[6]) - float(sys.argv[5])))' \
        "$out" "$solver" "$s" "$w" "$t0" "$t1"
    done
  done
done
