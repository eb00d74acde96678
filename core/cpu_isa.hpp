// The CPU's instruction sets: which of the variants that bitqat's vectorized CPU kernels are compiled
// for (bitlinear/cpu/row_kernels*, models/cpu/*_kernels*) this CPU runs and which one a process uses,
// and the process-wide choice of oneDNN's instruction set, made before LibTorch runs its first
// oneDNN primitive (oneDNN reads ONEDNN_MAX_CPU_ISA once, at that point).
//
// bitqat's exact quantized linears multiply int8 x int8 -> int32 with at::_int_mm, which calls
// oneDNN's s8 x s8 -> s32 gemm. On CPUs with AMX (Intel Sapphire Rapids and later) oneDNN picks its AMX int8
// kernels, which were slower at most of bitqat's shapes than its AVX-512 VNNI ones. Measured on the
// project's 2-core Xeon (AMX, 2 threads, torch 2.11, 2026-12-01), at::_int_mm median of 30 calls,
// AMX / VNNI: M x K x N = 2048 x 128 x 384: 0.55-0.61 / 0.19-0.26 ms; 2048 x 128 x 512: 0.85-0.92 /
// 0.24-0.25; 2048 x 576 x 1536: 5.2-5.3 / 3.9-4.2; 8192 x 576 x 576: 9.2-9.9 / 6.0-6.4; about
// equal at 2048 x 512 x 128 (0.25-0.30 / 0.27-0.34) and AMX faster at large K (2048 x 1536 x 576:
// 2.9-3.1 / 3.9-4.3). The quickstart's step (build/bench/train_bench, farm-bench pairs): 1.055x
// faster with the variable set by hand (6 pairs, 0.88-1.36), 1.05x with this call (6 pairs,
// 0.96-1.33); the _int_mm self time per step 8.9-10.4 -> 5.5-6.2 ms.
// The products are exact integer sums, so the cap changes no result. bitqat does no bf16 on the
// CPU (device.precision bf16 is refused there), the other thing AMX would speed up.
#pragma once
#include <string>

namespace bitqat::core {

// The instruction sets of the kernel variants, one translation unit each, in increasing order:
// baseline x86-64, AVX2 with FMA, AVX-512 (F, BW, VL, DQ).
enum class CpuIsa { kDefault, kAvx2, kAvx512 };
inline constexpr CpuIsa kCpuIsas[] = {CpuIsa::kDefault, CpuIsa::kAvx2, CpuIsa::kAvx512};

// "default", "avx2", "avx512": ATEN_CPU_CAPABILITY's spelling of the same sets.
const char* to_string(CpuIsa isa);

// Whether this CPU has every feature the variant is compiled with (kDefault: always).
bool cpu_runs(CpuIsa isa);

// The variant for LibTorch's CPU capability, as at::get_cpu_capability() names it ("AVX512", "AVX2",
// "DEFAULT"; any other name is the baseline), lowered to the baseline when this CPU cannot run it.
// The kernels follow LibTorch's choice, so ATEN_CPU_CAPABILITY picks theirs too. (core does not link
// LibTorch: the kernels' callers pass the capability.)
CpuIsa kernel_isa(const std::string& aten_capability);

// One kernel table per variant, indexed by CpuIsa: the table of `isa`, or nullptr when this CPU
// cannot run it.
template <class Table>
const Table* variant_for(CpuIsa isa, const Table* const (&variants)[3]) {
  return cpu_runs(isa) ? variants[static_cast<int>(isa)] : nullptr;
}

// The value set when the user has not chosen one.
inline constexpr const char* kDefaultOnednnMaxCpuIsa = "AVX512_CORE_VNNI";

// Sets ONEDNN_MAX_CPU_ISA to kDefaultOnednnMaxCpuIsa unless it is already set (a user's or a test
// script's choice wins; ONEDNN_MAX_CPU_ISA=ALL restores AMX). Call first in main(), before any
// ATen operation. On CPUs without AMX the cap changes nothing (it is above what they have).
// Returns whether it set the variable.
bool default_onednn_max_cpu_isa();

}  // namespace bitqat::core
