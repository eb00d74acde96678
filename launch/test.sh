#!/usr/bin/env bash
# The test suite, once per LibTorch CPU capability: ATEN_CPU_CAPABILITY=default, avx2, avx512.
# LibTorch picks its CPU kernels by instruction set, and a test that passes under one can fail under
# another (vectorized kernels reduce in another order), so every numerics test must hold under all three. Each run prints
# the capability that actually ran. LibTorch 2.11 takes ATEN_CPU_CAPABILITY=avx512 at its word even on a CPU without
# AVX-512 (its kernels then stop on an illegal instruction), so a pass the CPU cannot run (`bitqat version
# --cpu-isas`) is skipped, and says so.
# oneDNN (LibTorch's int8 matmul, at::_int_mm, which the exact quantized linear uses) picks its own
# kernels by instruction set: each pass caps it to the matching one (ONEDNN_MAX_CPU_ISA SSE41, AVX2,
# and the CPU's best), so its non-VNNI int8 kernels are tested too.
#
#   launch/test.sh [ctest arguments...]     (default: --output-on-failure -j 2)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BITQAT_BUILD:-$root/build}"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--output-on-failure -j 2)
# Whether the tests that run our GGUF files in llama.cpp will run (they skip without llama-cpp-python).
py="$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null || true)"
if [ -n "$py" ] && lv="$("$py" -c "from importlib.metadata import version; print(version('llama_cpp_python'))" 2>/dev/null)"; then
  printf '[test] llama.cpp tests run (llama-cpp-python %s)\n' "$lv"
else
  printf '[test] llama.cpp tests will be skipped: no llama-cpp-python for %s (launch/setup.sh --tests installs it)\n' "${py:-the configured Python}"
fi
# ctest runs two tests at a time, each with LibTorch's OpenMP threads (and llama.cpp's); by default
# GNU OpenMP spins between parallel regions, and two spinning processes on two cores starve each
# other: two llama.cpp tests took 38 s side by side with spinning, 14 s with passive waiting. A
# value the caller sets is kept.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The capabilities this CPU can run, as bitqat's own kernels decide it (core::cpu_runs).
cpu_isas="$("$BUILD/bitqat" version --cpu-isas)"
status=0
for cap in default avx2 avx512; do
  case "$cap" in default) dnnl=SSE41 ;; avx2) dnnl=AVX2 ;; *) dnnl=ALL ;; esac
  if [[ " $cpu_isas " != *" $cap "* ]]; then
    printf '[test] ATEN_CPU_CAPABILITY=%s: skipped, this CPU cannot run it (it runs: %s)\n' "$cap" "$cpu_isas"
    continue
  fi
  export ONEDNN_MAX_CPU_ISA=$dnnl
  ran="$(ATEN_CPU_CAPABILITY=$cap "$BUILD/bitqat" version --cpu-capability)"
  printf '[test] ATEN_CPU_CAPABILITY=%s: LibTorch runs its %s kernels (oneDNN capped at %s)\n' "$cap" "$ran" "$dnnl"
  # The GgufInLlamaCpp tests train six small models and run them in llama.cpp (minutes each on
  # this 2-core machine): they check llama.cpp's computation of our files, so they run in the
  # first pass only; the bitqat numerics they rely on are tested under every capability by the rest.
  # So do the CUDA kernels on the CPU harness (labels cuda_sim and cuda_sim_asan, cuda/sim/) and the
  # SmolLM2 tokenizer test (string work): they use no LibTorch kernel, so the capability does not
  # change what they compute. So does the install
  # test (label install, tests/install/): it checks the install rules and the package config, and
  # spends a minute or two compiling against LibTorch's headers.
  extra=()
  [ "$cap" = default ] || [ $# -gt 0 ] || extra=(-E '^(GgufInLlamaCpp[.]|GgufTokenizer[.]SmolLM2TokenizesLikeTransformers$)' -LE '^(cuda_sim|install$)')
  if ! ATEN_CPU_CAPABILITY=$cap ctest --test-dir "$BUILD" "${args[@]}" "${extra[@]}"; then
    printf '[test] FAILED under ATEN_CPU_CAPABILITY=%s (%s)\n' "$cap" "$ran"
    status=1
  fi
done
exit $status
