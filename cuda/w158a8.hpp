// Launchers of the W1.58A8 kernels (packed ternary weights x int8 activations). All pointers are
// device pointers, all launches asynchronous on `stream`; no synchronisation inside. Layouts are
// those of cuda/ternary_format.hpp: activation codes q [M, Kp] row-major (Kp = padded_k(K), zero
// padded), packed weights [N, Kp / 16] uint32 words. Base pointers must be 16-byte aligned.
//
// The matmul has several kernels (Kernel below), each correct for every shape it accepts; which one
// is fastest depends on the device and the shape, so cuda/dispatch.hpp picks a Plan from measurements.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/quant.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {

// The matmul kernels (docs/kernels.md has their designs and resources).
enum class Kernel : int {
  kGemvColumn = 0,    // M <= 16: one warp per output column, dp4a (the first GEMV)
  kGemvTiled = 1,     // M <= 16: activations staged once per block in shared memory, 2 or 4 columns
                      //   per warp with their 16-byte weight loads in flight; split-K
  kMmaSmall = 2,      // any M: 32 x 64 mma.sync m16n8k32 tiles (a grid that fills the GPU at small M); split-K
  kMma = 3,           // any M: 64 x 64 mma.sync tiles (the first GEMM); split-K
  kMmaPipelined = 4,  // any M: 64 x 64 tiles, the next K tile loaded while this one computes; split-K
  kCublasInt8 = 5,    // per tensor / channel: cuBLAS's int8 GEMM on weights expanded to int8 once,
                      //   then the scale epilogue
  kGemvFused = 6,     // M = 1 from float activations: the per-token quantization fused into the tiled
                      //   GEMV (w158a8_linear_m1 only); split-K
};
constexpr int kKernelCount = 7;

// A kernel and how many parts K is split into (split-K: partial sums per part, then one pass adds
// them in part order, so the result does not depend on scheduling; the integer sums are the unsplit
// kernel's exactly).
struct Plan {
  Kernel kernel = Kernel::kMma;
  int splits = 1;
};

// Whether the default GEMV serves this M (Plan default: cuda/dispatch.hpp default_plan).
inline bool uses_gemv(int64_t m) { return m <= 16; }

// The largest K the fused M = 1 kernel takes (its activation codes live in shared memory).
constexpr int64_t kFusedMaxK = 32768;

BITQAT_CUDA_LAUNCHERS_BEGIN

const char* kernel_name(Kernel kernel);

// Why a plan cannot serve (M, K, scale kind), or "" when it can: the GEMVs take M <= 16, the fused
// one M = 1 and K <= kFusedMaxK, cuBLAS per-tensor / per-channel scales only, and splits must be in
// [1, 64] (1 for kGemvColumn and cuBLAS). The matmul launchers also refuse kGemvFused (it starts
// from float activations: w158a8_linear_m1).
const char* plan_refusal(const Plan& plan, int64_t m, int64_t k, ScaleKind kind);

// Bytes of device workspace `plan` needs for this call (0: none): split-K partials, and for cuBLAS
// the int32 product (plus the expanded weights when the caller does not pass them).
size_t workspace_bytes(const Plan& plan, int64_t m, int64_t n, int64_t k, ScaleKind kind, bool have_expanded);

// Per-token absmax int8 quantization of x [M, K] (optionally RMS-normalised first with norm_weight
// [K]); writes q [M, Kp] and scales [M] (s = 127 / max(amax, eps); x ~= q / s). cuda/quant.hpp's
// quantize_rows with qmax 127 and row stride Kp.
void quantize_activations(const void* x, DType x_dtype, int64_t m, int64_t k, float eps, const float* norm_weight,
                          float norm_eps, int8_t* q, float* scales, cudaStream_t stream);

// Absmean ternary quantize-and-pack of w [N, K] float32: scales (1, N or N x groups floats) and
// packed words. Workspaces: `codes` N * K int8, `workspace` 2 * N doubles (per-tensor row sums).
void quantize_pack_ternary(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps,
                           float* scales, int8_t* codes, double* workspace, uint32_t* packed, cudaStream_t stream);

// y [M, N] = (q @ W^T) * wscale / xscale (+ bias), y in float32 or bf16, with the default plan:
// GEMV (dp4a) for M <= 16, the 64 x 64 int8 tensor-core GEMM (mma.sync m16n8k32) otherwise.
// group: the group size for kPerGroup. Throws std::invalid_argument on bad arguments, before any launch.
void w158a8_matmul(const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed, const float* wscales,
                   ScaleKind kind, int64_t group, int64_t n, int64_t k, const float* bias, void* y, DType y_dtype,
                   cudaStream_t stream);

// The same with a chosen plan. workspace: workspace_bytes(plan, ...) bytes of device memory (may be
// null when that is 0); expanded: the weights as int8 [N, Kp] (expand_packed), used by kCublasInt8
// when given (else expanded into the workspace on every call). Refuses a plan that cannot serve.
void w158a8_matmul_plan(const Plan& plan, const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed,
                        const int8_t* expanded, const float* wscales, ScaleKind kind, int64_t group, int64_t n,
                        int64_t k, const float* bias, void* y, DType y_dtype, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

// The raw int32 accumulators y_int [M, N] = q @ W^T through the same kernels (tests: exact equality
// with the reference), with the default plan or a chosen one.
void w158a8_matmul_int32(const int8_t* q, int64_t m, const uint32_t* packed, int64_t n, int64_t k, int32_t* y_int,
                         cudaStream_t stream);
void w158a8_matmul_int32_plan(const Plan& plan, const int8_t* q, int64_t m, const uint32_t* packed,
                              const int8_t* expanded, int64_t n, int64_t k, int32_t* y_int, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);

// One token, activation quantization fused into the GEMV (decoding): x [1, K] float32 or bf16,
// optionally RMS-normalised with norm_weight [K], quantized per token exactly as quantize_activations
// does (each block quantizes the row into shared memory, K <= kFusedMaxK), then y [1, N] as
// w158a8_matmul. splits: split-K parts (workspace: workspace_bytes of the kGemvFused plan, M = 1).
void w158a8_linear_m1(const void* x, DType x_dtype, int64_t k, float eps, const float* norm_weight, float norm_eps,
                      const uint32_t* packed, const float* wscales, ScaleKind kind, int64_t group, int64_t n,
                      const float* bias, void* y, DType y_dtype, int splits, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

// Packed weights [N, Kp / 16] words -> int8 codes [N, Kp] (zeros past K), for kCublasInt8.
void expand_packed(const uint32_t* packed, int64_t n, int64_t k, int8_t* expanded, cudaStream_t stream);

// The name of the current device (cudaGetDeviceProperties; "CPU harness" in the emulated build), the
// key of cuda/dispatch.hpp's table.
const char* current_device_name();

BITQAT_CUDA_LAUNCHERS_END

}  // namespace bitqat::cuda
