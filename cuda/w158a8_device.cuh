// Device helpers of the W1.58A8 matmul kernels (cuda/w158a8_gemv.cu, w158a8_mma.cu, w158a8.cu): weight
// decoding, the mma.sync step, and where a kernel's sums go (Out: raw int32, split-K partials, or the
// scale epilogue into float32 / bf16). Included by .cu files only, under nvcc and the CPU harness.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/abi.hpp"
#include "cuda/mma_m16n8k32.hpp"
#include "cuda/quant.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace w158a8 {

// Four signed int8 lanes of codes from a packed word and a shift i (0..3): cuda/ternary_format.hpp.
__device__ __forceinline__ int decode4(uint32_t word, int i) {
  return static_cast<int>(__vsub4((word >> (2 * i)) & 0x03030303u, 0x01010101u));
}

// A packed word whose codes are all 0 (c = 1): what rows past N decode to.
constexpr uint32_t kZeroWord = 0x55555555u;

// D += A B for one m16n8k32 step. Fragments: cuda/mma_m16n8k32.hpp. On the CPU harness (no
// __CUDA_ARCH__) the instruction is emulated from that table.
__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  sim::mma_m16n8k32_s8(c, a, b, __FILE__, __LINE__);
#endif
}

enum class OutMode : int { kRaw = 0, kPartial = 1, kF32 = 2, kBF16 = 3 };

// Where the sums of output (row, col) go.
//   kRaw:     y_int [M, N] = the int32 sum (per tensor / channel weights, unscaled; tests).
//   kPartial: split-K: partial [split, M, N], int32 (per tensor / channel) or float (per group,
//             already scaled by the weight scales), summed in split order by the reduce kernel.
//   kF32 / kBF16: y [M, N] = total / xs[row] + bias[col], where total = int sum * ws[col * stride]
//             (per tensor: stride 0; per channel: 1) or, per group, the float sum of the groups'
//             int sums times their scales. Every operation rounds once, in this order.
struct Out {
  OutMode mode;
  int64_t m, n;
  int32_t* y_int;
  void* partial;
  void* y;
  const float* xs;
  const float* ws;
  int64_t scale_stride_n;
  const float* bias;
};

__device__ __forceinline__ void store_y(const Out& o, int64_t row, int64_t col, float total) {
  const float v = total / o.xs[row] + (o.bias ? o.bias[col] : 0.0f);
  if (o.mode == OutMode::kF32) {
    static_cast<float*>(o.y)[row * o.n + col] = v;
  } else {
    static_cast<__nv_bfloat16*>(o.y)[row * o.n + col] = __float2bfloat16(v);
  }
}

// The int32 sum of a per-tensor / per-channel output (all of K, or split `split`'s share).
__device__ __forceinline__ void emit_int(const Out& o, int64_t row, int64_t col, int split, int32_t sum) {
  switch (o.mode) {
    case OutMode::kRaw:
      o.y_int[row * o.n + col] = sum;
      break;
    case OutMode::kPartial:
      static_cast<int32_t*>(o.partial)[(split * o.m + row) * o.n + col] = sum;
      break;
    default:
      store_y(o, row, col, static_cast<float>(sum) * o.ws[col * o.scale_stride_n]);
      break;
  }
}

// The scaled float sum of a per-group output.
__device__ __forceinline__ void emit_float(const Out& o, int64_t row, int64_t col, int split, float total) {
  if (o.mode == OutMode::kPartial) {
    static_cast<float*>(o.partial)[(split * o.m + row) * o.n + col] = total;
  } else {
    store_y(o, row, col, total);
  }
}

}  // namespace w158a8
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
