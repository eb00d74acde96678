#!/usr/bin/env bash
# Peak host memory of importing a ~1B-parameter Llama (and of writing and reading its checkpoint),
# measured with /usr/bin/time -v against the model's float32 size. Not a test: a measurement.
#
#   bench/import_memory.sh [WORK_DIR] [--dtype bfloat16|float32]
#
# Writes a synthetic Llama with transformers (bench/make_synthetic_llama.py, TinyLlama's shape, 1.1B
# parameters, random weights; about 2.2 GB in bfloat16, 4.4 GB in float32) under WORK_DIR (default
# /tmp/bitqat_import_memory; kept for reruns), then runs build/bench/import_bench on it under
# /usr/bin/time -v. The program prints its resident set after each phase (open, build, init_from,
# optimizer state, checkpoint write, checkpoint read); the last line here is the whole run's peak.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/bitqat_import_memory}"
dtype=bfloat16
if [ "${2:-}" = "--dtype" ]; then dtype="${3:?--dtype needs a value}"; fi
py="${BITQAT_PYTHON:-$root/.venv/bin/python}"
bin="${BITQAT_BUILD:-$root/build}/bench/import_bench"
model="$work/llama-1b-$dtype"
[ -x "$bin" ] || { echo "import_memory: $bin is missing: build first (launch/setup.sh)" >&2; exit 1; }
if [ ! -f "$model/config.json" ]; then
  "$py" "$root/bench/make_synthetic_llama.py" "$model" --dtype "$dtype"
fi
echo "model: $model ($(du -sh "$model" | cut -f1) on disk)"
log="$work/time-$dtype.log"
/usr/bin/time -v "$bin" "$model" "$work" 2> "$log"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$log"
