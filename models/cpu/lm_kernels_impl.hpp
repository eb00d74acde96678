// The body of the language model's CPU kernels (lm_kernels.hpp), included by one .cpp per
// instruction set with BITQAT_LMK_NS naming its namespace. Plain loops written for the compiler's
// vectorizer (restrict pointers, one loop per half of a head, branch-free relu). As in
// bitlinear/cpu/row_kernels_impl.hpp, nothing here has external linkage beyond the kernel table and
// no standard-library inline function or template is used, so that no AVX-512 copy of a shared
// function can be picked by the linker for baseline callers.
#include <cstdint>

#include "bitlinear/cpu/relu_bits.hpp"
#include "models/cpu/lm_kernels.hpp"

namespace bitqat::models::cpu::BITQAT_LMK_NS {
namespace {

using bitlinear::cpu::relu_bits;

// relu(x)^2 over elements [begin, end): out = r * r, or with g the backward out = g * (r + r), r = relu(x).
void relu_squared(const float* x, const float* g, float* out, int64_t begin, int64_t end) {
  if (g) {
    for (int64_t i = begin; i < end; ++i) {
      const float r = relu_bits(x[i]);
      out[i] = g[i] * (r + r);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      const float r = relu_bits(x[i]);
      out[i] = r * r;
    }
  }
}

// One head's rotation; restrict pointers and one loop per half, so each loop vectorizes.
void rotate_half(const float* __restrict x, const float* __restrict c, const float* __restrict sn, int64_t half,
                 float* __restrict y) {
  for (int64_t j = 0; j < half; ++j) y[j] = x[j] * c[j] + (-x[j + half]) * sn[j];
  for (int64_t j = 0; j < half; ++j) y[j + half] = x[j + half] * c[j + half] + x[j] * sn[j + half];
}

void rotate_half_backward(const float* __restrict g, const float* __restrict c, const float* __restrict sn,
                          int64_t half, float* __restrict y) {
  for (int64_t j = 0; j < half; ++j) y[j] = g[j] * c[j] + g[j + half] * sn[j + half];
  for (int64_t j = 0; j < half; ++j) y[j + half] = g[j + half] * c[j + half] + (-g[j]) * sn[j];
}

void rope_rows(const float* x, const float* cos, const float* sin, int64_t t, int64_t h, int64_t d, bool backward,
               float* y, int64_t begin, int64_t end) {
  const int64_t half = d / 2;
  for (int64_t row = begin; row < end; ++row) {
    const float* c = cos + (row % t) * d;
    const float* sn = sin + (row % t) * d;
    for (int64_t i = 0; i < h; ++i) {
      const int64_t off = (row * h + i) * d;
      if (backward) {
        rotate_half_backward(x + off, c, sn, half, y + off);
      } else {
        rotate_half(x + off, c, sn, half, y + off);
      }
    }
  }
}

}  // namespace

extern const LmKernels kKernels;
const LmKernels kKernels = {BITQAT_LMK_NAME, rope_rows, relu_squared};

}  // namespace bitqat::models::cpu::BITQAT_LMK_NS
