// Launchers of the W1.58A8 kernels (packed ternary weights x int8 activations). All pointers are
// device pointers, all launches asynchronous on `stream`; no synchronisation inside. Layouts are
// those of cuda/ternary_format.hpp: activation codes q [M, Kp] row-major (Kp = padded_k(K), zero
// padded), packed weights [N, Kp / 16] uint32 words. Base pointers must be 16-byte aligned.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/quant.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {

// Whether the small-M (GEMV) kernel serves this M.
inline bool uses_gemv(int64_t m) { return m <= 16; }

BITQAT_CUDA_LAUNCHERS_BEGIN

// Per-token absmax int8 quantization of x [M, K] (optionally RMS-normalised first with norm_weight
// [K]); writes q [M, Kp] and scales [M] (s = 127 / max(amax, eps); x ~= q / s). cuda/quant.hpp's
// quantize_rows with qmax 127 and row stride Kp.
void quantize_activations(const void* x, DType x_dtype, int64_t m, int64_t k, float eps, const float* norm_weight,
                          float norm_eps, int8_t* q, float* scales, cudaStream_t stream);

// Absmean ternary quantize-and-pack of w [N, K] float32: scales (1, N or N x groups floats) and
// packed words. Workspaces: `codes` N * K int8, `workspace` 2 * N doubles (per-tensor row sums).
void quantize_pack_ternary(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps,
                           float* scales, int8_t* codes, double* workspace, uint32_t* packed, cudaStream_t stream);

// y [M, N] = (q @ W^T) * wscale / xscale (+ bias), y in float32 or bf16. GEMV (dp4a) for M <= 16,
// int8 tensor-core GEMM (mma.sync m16n8k32) otherwise. group: the group size for kPerGroup.
void w158a8_matmul(const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed, const float* wscales,
                   ScaleKind kind, int64_t group, int64_t n, int64_t k, const float* bias, void* y, DType y_dtype,
                   cudaStream_t stream);

// The raw int32 accumulators y_int [M, N] = q @ W^T through the same kernels (tests: exact equality
// with the reference).
void w158a8_matmul_int32(const int8_t* q, int64_t m, const uint32_t* packed, int64_t n, int64_t k, int32_t* y_int,
                         cudaStream_t stream);

BITQAT_CUDA_LAUNCHERS_END

}  // namespace bitqat::cuda
