// relu on a float's bits: the relu of relu(x)^2 wherever bitqat computes it on the CPU (the fused
// norm-and-codes of bitlinear/cpu/row_kernels_impl.hpp and the model's relu^2 of
// models/cpu/lm_kernels_impl.hpp), so that the fused and the unfused paths give the same values.
// Negatives and -0 become +0, NaN of either sign is kept (at::relu's values, except that at::relu
// keeps -0; relu^2 is +0 either way). An integer mask, because GCC keeps `v < 0 ? 0 : v` a branch
// (a float compare may trap), and a branch does not vectorize.
//
// static: every per-instruction-set source that includes this compiles its own copy with its own
// flags (a shared inline copy could be taken by the linker from the AVX-512 source for a baseline
// caller).
#pragma once
#include <cstdint>
#include <cstring>

namespace bitqat::bitlinear::cpu {

static inline float relu_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u &= ((u >> 31) == 0u || (u & 0x7fffffffu) > 0x7f800000u) ? ~0u : 0u;
  float r;
  std::memcpy(&r, &u, sizeof r);
  return r;
}

}  // namespace bitqat::bitlinear::cpu
