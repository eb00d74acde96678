#!/usr/bin/env bash
# Registers, spills, stack and static shared memory of every kernel of cuda/, as ptxas reports them
# (nvcc -Xptxas -v, the flags cuda/CMakeLists.txt builds with), as a markdown table for docs/kernels.md.
#   bench/ptxas_resources.sh [files...]     (default: every cuda/*.cu)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
nvcc="${NVCC:-/usr/local/cuda/bin/nvcc}"
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(cuda/*.cu)
echo "| file | kernel | arch | registers | spill st/ld | stack | smem |"
echo "|---|---|---|---|---|---|---|"
for f in "${files[@]}"; do
  "$nvcc" -std=c++17 -O3 -I. --fmad=false -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
    -Xptxas -v -c "$f" -o /dev/null 2>&1 |
    awk -v file="$(basename "$f")" '
      /Compiling entry function/ { match($0, /function .[^ ]+./); fn = substr($0, RSTART + 10, RLENGTH - 11);
                                   match($0, /for .sm_[0-9a-z]+./); arch = substr($0, RSTART + 5, RLENGTH - 6); next }
      /bytes stack frame/ { split($0, a, /[ ,]+/); for (i = 1; i <= NF; ++i) { if ($i == "bytes" && $(i+1) == "stack") st = $(i-1);
                            if ($i == "spill" && $(i+1) == "stores,") ss = $(i-2); if ($i == "spill" && $(i+1) == "loads") sl = $(i-2) } next }
      /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
                                smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11);
                                print file "\t" fn "\t" arch "\t" regs "\t" ss "/" sl "\t" st "\t" smem }'
done | while IFS=$'\t' read -r file fn arch regs spill stack smem; do
  name="$(echo "$fn" | c++filt | sed -E 's/bitqat::cuda::device:://g; s/w158a8:://g; s/reduce:://g; s/\(anonymous namespace\):://g; s/__nv_bfloat16/bf16/g; s/\(.*//')"
  echo "| $file | \`$name\` | $arch | $regs | $spill | $stack | $smem |"
done | sort -t'|' -k2,2 -k3,3 -k4,4
