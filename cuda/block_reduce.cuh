// Block-wide reductions in the canonical order of cuda/quant_codes.hpp, shared by the kernels that
// compute codes (cuda/quant.cu, the fused GEMV of cuda/w158a8_gemv.cu): a block of kReduceLanes
// threads, thread l holding lane l's partial. Included by .cu files only, under nvcc and the harness.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/abi.hpp"
#include "cuda/quant_codes.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace reduce {

constexpr int kLanes = kReduceLanes;  // threads per block of every reduction kernel

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The canonical tree over the block's lane partials (blockDim.x == kLanes); every thread gets lane 0.
__device__ __forceinline__ double canonical_block_sum(double v, double* smem) {
  const int t = threadIdx.x;
  smem[t] = v;
  __syncthreads();
  for (int o = kLanes / 2; o >= 32; o /= 2) {
    if (t < o) smem[t] += smem[t + o];
    __syncthreads();
  }
  if (t < 32) {
    double x = smem[t];
    for (int o = 16; o > 0; o /= 2) x += __shfl_down_sync(0xffffffffu, x, o);
    if (t == 0) smem[0] = x;
  }
  __syncthreads();
  const double out = smem[0];
  __syncthreads();  // smem is reused by the caller
  return out;
}

// Block maximum of non-negative values (exact in any order) and whether all were finite: NaN when
// some thread saw a non-finite value. smem holds kLanes / 32 floats.
__device__ __forceinline__ float block_absmax(float a, bool finite, float* smem, int* bad) {
  const int t = threadIdx.x;
  if (t == 0) *bad = 0;
  for (int o = 16; o > 0; o /= 2) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  __syncthreads();
  if (!finite) atomicOr(bad, 1);
  if (t % 32 == 0) smem[t / 32] = a;
  __syncthreads();
  if (t < 32) {
    float x = t < kLanes / 32 ? smem[t] : 0.0f;
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (t == 0) smem[0] = x;
  }
  __syncthreads();
  const float out = *bad ? NAN : smem[0];
  __syncthreads();
  return out;
}

}  // namespace reduce
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
