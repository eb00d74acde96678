// The W1.58A8 matmul kernels' launches, between the .cu files of cuda/ (internal to cuda/): each
// kernel file launches its kernels; cuda/w158a8.cu validates arguments, picks the plan, sizes the
// workspace and runs the split-K reduction. Arguments are already checked when these are called.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/w158a8.hpp"
#include "cuda/w158a8_device.cuh"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace w158a8 {

// One matmul: q [M, Kp] codes, packed [N, Kp / 16] words, weight scales (per group: ws[col * stride
// + k / group]; per tensor / channel, Out applies ws[col * stride] to the int32 sum).
struct Problem {
  const int8_t* q;
  int64_t m, n, k, kp;
  const uint32_t* packed;
  bool per_group;
  const float* ws;
  int64_t stride, group;
};

// The number of 64-weight chunks holding some k < K: the kernels never visit the row padding past
// K, which has no scale group.
BITQAT_HD int64_t live_chunks(int64_t k) { return (k + 63) / 64; }
// Split-K: each part takes whole chunks (kernels by 64-weight tiles take whole K tiles of 64, the same).
BITQAT_HD int64_t chunks_per_split(int64_t k, int splits) { return (live_chunks(k) + splits - 1) / splits; }

void launch_gemv_column(const Problem& p, const Out& out, cudaStream_t stream);
void launch_gemv_tiled(const Problem& p, int splits, const Out& out, cudaStream_t stream);
// x [1, K] float32 or bf16 quantized in each block (optional RMSNorm), then the tiled GEMV; out.xs
// is not read (the scale is the block's own); scale_out (may be null) receives it from one block.
void launch_gemv_fused(const void* x, DType x_dtype, const float* norm_weight, float eps, float norm_eps,
                       const Problem& p, int splits, const Out& out, float* scale_out, cudaStream_t stream);
void launch_mma(Kernel kernel, const Problem& p, int splits, const Out& out, cudaStream_t stream);
// int8 [N, Kp] weights; y_int [M, N] = q @ W^T by cuBLAS.
void launch_cublas_int8(const Problem& p, const int8_t* expanded, int32_t* y_int, cudaStream_t stream);
void launch_expand(const uint32_t* packed, int64_t n, int64_t kp, int8_t* expanded, cudaStream_t stream);
// Per-tensor / per-channel int32 sums [M, N] -> out (the scale epilogue).
void launch_epilogue(const int32_t* sums, const Problem& p, const Out& out, cudaStream_t stream);
// Split-K: adds the parts' partials [splits, M, N] in part order, then out.
void launch_reduce(const void* partial, const Problem& p, int splits, const Out& out, cudaStream_t stream);

}  // namespace w158a8
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
