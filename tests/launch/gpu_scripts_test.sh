#!/usr/bin/env bash
# Keeps the GPU-machine scripts from rotting on CPU-only CI: both parse, launch/gpu_check.sh's dry run
# ends at once with a clear message, and the benchmark's argument handling works without a GPU.
#   tests/launch/gpu_scripts_test.sh BUILD_DIR
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:?usage: gpu_scripts_test.sh BUILD_DIR}"
fail=0
check() {  # check DESCRIPTION WANTED_RC ACTUAL_RC
  if [ "$2" != "$3" ]; then
    echo "FAIL: $1: exit $3, expected $2"
    fail=1
  else
    echo "ok: $1"
  fi
}
for s in gpu_bundle.sh gpu_check.sh; do
  bash -n "$root/launch/$s"
  check "launch/$s parses" 0 $?
done
t0=$SECONDS
msg="$(BITQAT_GPU_CHECK_DRY=1 OUT="$(mktemp -d)" "$root/launch/gpu_check.sh" 2>&1)"
check "gpu_check.sh dry run" 0 $?
echo "$msg"
case "$msg" in *"dry run, nothing was run"*) echo "ok: dry-run message" ;; *) echo "FAIL: no dry-run message"; fail=1 ;; esac
[ $((SECONDS - t0)) -le 10 ] || { echo "FAIL: the dry run took $((SECONDS - t0)) s"; fail=1; }

bench="$build/bench/w158a8_bench"
if [ -x "$bench" ]; then
  out="$(mktemp -d)"
  "$bench" > /dev/null 2>&1
  check "w158a8_bench without arguments" 2 $?
  "$bench" kernels > /dev/null 2>&1
  check "w158a8_bench with one argument" 2 $?
  err="$("$bench" nonsense "$out" 2>&1)"
  check "w158a8_bench with an unknown benchmark" 2 $?
  case "$err" in *"unknown benchmark 'nonsense'"*) echo "ok: names the bad benchmark" ;; *) echo "FAIL: $err"; fail=1 ;; esac
  if ! nvidia-smi -L > /dev/null 2>&1; then
    err="$("$bench" kernels "$out" 2>&1)"
    check "w158a8_bench kernels without a GPU" 3 $?
    case "$err" in *"no CUDA device"*) echo "ok: says it needs a GPU" ;; *) echo "FAIL: $err"; fail=1 ;; esac
    "$bench" memory "$out" > /dev/null 2>&1
    check "w158a8_bench memory without a GPU" 0 $?
    grep -q '^block,,,12582912,1572892,' "$out/memory.csv"
    check "memory.csv holds the block's bytes" 0 $?
  fi
else
  echo "(w158a8_bench not built: BITQAT_BUILD_BENCH is off; its checks are left out)"
fi
exit $fail
