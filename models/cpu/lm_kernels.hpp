// Vectorized CPU kernels of the language model's own float32 passes (models/lm.cpp): RoPE on the
// projections' layout and relu(x)^2. One source (lm_kernels_impl.hpp) is compiled for baseline
// x86-64, AVX2 and AVX-512, and the variant matching LibTorch's CPU capability is used
// (core/cpu_isa.hpp kernel_isa), as for bitlinear/cpu/row_kernels.hpp. Every variant computes
// exactly the scalar formulas below, one IEEE operation per step with no FMA contraction
// (-ffp-contract=off), so outputs are bit-identical across variants and thread counts.
//
// All pointers are to contiguous row-major float32 arrays; each function handles the rows (or
// elements) [begin, end), and callers split them over threads (at::parallel_for).
#pragma once
#include <cstdint>

// core/cpu_isa.hpp, declared rather than included: the per-instruction-set sources include this
// header, and nothing they compile may be shared with other translation units.
namespace bitqat::core {
enum class CpuIsa;
}

namespace bitqat::models::cpu {

struct LmKernels {
  const char* isa;  // "default", "avx2", "avx512"
  // RoPE on rows of x [B * T, h, d] (the projections' own layout; row r at position r % t) with cos,
  // sin [t, d], for the halves x1, x2 of each head: y1 = x1 c1 + (-x2) s1, y2 = x2 c2 + x1 s2
  // (models/lm.cpp apply_rope's arithmetic, operation for operation); backward, the transposed
  // rotation of the gradient: y1 = g1 c1 + g2 s2, y2 = g2 c2 + (-g1) s1. d even; x and y distinct.
  void (*rope_rows)(const float* x, const float* cos, const float* sin, int64_t t, int64_t h, int64_t d, bool backward,
                    float* y, int64_t begin, int64_t end);
  // relu(x)^2 on elements [begin, end) of a flat array: out = r * r, or, with g non-null, the
  // backward out = g * (r + r); r = relu(x) keeping NaN, negatives and -0 to +0 (the relu of
  // bitlinear's fused relu^2 codes, bitlinear/cpu/relu_bits.hpp).
  void (*relu_squared)(const float* x, const float* g, float* out, int64_t begin, int64_t end);
};

// The variant for LibTorch's current CPU capability.
const LmKernels& lm_kernels();
// A given variant, or nullptr when this CPU cannot run it (tests, benchmarks).
const LmKernels* lm_kernels_for(core::CpuIsa isa);

}  // namespace bitqat::models::cpu
