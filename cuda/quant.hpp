// Launchers of the quantization kernels: RMSNorm, per-token and per-tensor int8 activation codes,
// ternary / binary weight codes and their scales, and packing codes into the 2-bit format. They
// compute exactly what cuda/quant_codes.hpp defines (same canonical sums, same element operations),
// so their codes equal the CPU's bit for bit. All pointers are device pointers; launches are
// asynchronous on `stream`, with no synchronisation inside; every launch is checked.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/abi.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {

enum class DType : int { kF32 = 0, kBF16 = 1 };

BITQAT_CUDA_LAUNCHERS_BEGIN

// RMSNorm of x [M, K] (float32 or bf16) with weight w [K] float32 (may be null: weight 1):
// y [M, K] float32 = (x * r) * w, r [M] float32 (may be null) = 1 / sqrt(sum_sq / K + eps).
void rms_norm_rows(const void* x, DType x_dtype, int64_t m, int64_t k, const float* w, double eps, float* y, float* r,
                   cudaStream_t stream);

// Per-token absmax codes of x [M, K] (float32 or bf16), optionally RMS-normalised first with
// norm_weight [K] (the fused SubLN of PackedBitLinear): q [M, ldq] int8 (zeros in columns K..ldq),
// scales [M] float32 (x ~= q / s; NaN for a row holding NaN or infinity). qmax = 2^(bits-1) - 1.
void quantize_rows(const void* x, DType x_dtype, int64_t m, int64_t k, int64_t ldq, float eps, int qmax,
                   const float* norm_weight, double norm_eps, int8_t* q, float* scales, cudaStream_t stream);

// Per-tensor absmax codes of x [n] float32: q [n], scale [1].
void quantize_tensor(const float* x, int64_t n, float eps, int qmax, int8_t* q, float* scale, cudaStream_t stream);

// Weight scales of w [rows, cols] float32 in groups of `group` consecutive columns (the last group of
// a row may be shorter; group = cols for per channel): gamma [rows, groups] = mean |w| and, when
// `mean` is not null, mean [rows, groups] = mean w (binary). per_tensor: one gamma (and mean) over
// the whole tensor (group must be cols). `workspace` holds 2 * rows doubles (per tensor only).
void weight_scales(const float* w, int64_t rows, int64_t cols, int64_t group, bool per_tensor, float* gamma,
                   float* mean, double* workspace, cudaStream_t stream);

// Codes of w [rows, cols]: ternary (mean == null) clamp(round(w / (gamma + eps)), -1, 1), or binary
// sign(w - mean); the scale of (r, c) is index r * scale_stride + c / group (stride 0: per tensor).
void weight_codes(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride, const float* gamma,
                  const float* mean, float eps, int8_t* codes, cudaStream_t stream);

// Packs ternary codes [N, K] int8 into words [N, words_per_row(K)] (cuda/ternary_format.hpp).
void pack_codes(const int8_t* codes, int64_t n, int64_t k, uint32_t* packed, cudaStream_t stream);

// ---- fake quantization for the lambda-ramp training path (float32; the CPU row kernels' values) --

// Per-token fake quantization of x [M, K]: out [M, K] = x + lambda * (code / s - x) (exactly d at
// lambda 1 and x at lambda 0), scales [M] as quantize_rows.
void act_fake_quant(const float* x, int64_t m, int64_t k, float eps, int qmax, float lambda, float* out, float* scales,
                    cudaStream_t stream);

// The clipped straight-through gradient: dx = g * ((1 - lambda) + lambda * [|x| s / qmax <= clip]),
// all [M, K] with scales [M].
void act_ste_backward(const float* g, const float* x, const float* scales, int64_t m, int64_t k, int qmax, float clip,
                      float lambda, float* dx, cudaStream_t stream);

// Ternary fake quantization of w [rows, cols] with gamma from weight_scales (indexing as
// weight_codes): out = w + lambda * (code * gamma - w).
void ternary_fake_quant(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                        const float* gamma, float eps, float lambda, float* out, cudaStream_t stream);

BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
