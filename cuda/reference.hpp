// Scalar CPU references of the W1.58A8 path: the ground truth every GPU kernel is tested against.
// Deliberately plain loops; never optimise them.
#pragma once
#include <cstdint>
#include <vector>

#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {

// Round half away from zero (0.5 -> 1, -0.5 -> -1), as every bitqat quantizer does
// (cuda/quant_codes.hpp).
float round_half_away_ref(float v);

// RMSNorm of x [M, K]: y = (x * r) * w, r = 1 / sqrt(sum_sq / K + eps) with the canonical double sum
// of cuda/quant_codes.hpp (w may be null: weight 1; r may be null).
void rms_norm_ref(const float* x, int64_t m, int64_t k, const float* w, double eps, float* y, float* r);

// Per-token absmax codes of x [M, K] with `qmax` = 2^(bits-1) - 1 (cuda/quant.hpp quantize_rows):
// s[m] = qmax / max(max|x[m]|, eps) (NaN for a row holding NaN or infinity, its codes 0),
// q[m, k] = clamp(round_half_away(x * s), -qmax - 1, qmax), row stride ldq (zeros past K). With
// norm_weight, x is first RMS-normalised as rms_norm_ref does.
void quantize_rows_ref(const float* x, int64_t m, int64_t k, int64_t ldq, float eps, int qmax, const float* norm_weight,
                       double norm_eps, int8_t* q, float* scales);

// Per-tensor absmax codes of x [n]: scale[0] = qmax / max(max|x|, eps), q as quantize_rows_ref.
void quantize_tensor_ref(const float* x, int64_t n, float eps, int qmax, int8_t* q, float* scale);

// Weight scales of w [rows, cols] in groups of `group` consecutive columns (the last group of a row
// may be shorter): gamma [rows, groups] = mean |w|, and mean [rows, groups] = mean w when `mean` is
// not null; each the canonical double sum over the group divided by its count, rounded to float.
// per_tensor: one gamma (and mean) over the whole tensor, the canonical sum of the rows' sums.
void weight_scales_ref(const float* w, int64_t rows, int64_t cols, int64_t group, bool per_tensor, float* gamma,
                       float* mean);

// Codes of w [rows, cols]: ternary clamp(round_half_away(w / (gamma + eps)), -1, 1) when mean is
// null, else binary sign(w - mean) (+1 at 0); the scale of (r, c) is r * scale_stride + c / group
// (stride 0: one scale).
void weight_codes_ref(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                      const float* gamma, const float* mean, float eps, int8_t* codes);

// The lambda ramp's fake quantization (the CPU row kernels' arithmetic, one rounding per operation):
// activations per token, out = lambda == 1 ? d : lambda == 0 ? x : x + lambda * (d - x) with
// d = code / s (a non-finite row gives NaN, x itself at lambda 0), scales [M] as quantize_rows_ref;
void act_fake_quant_ref(const float* x, int64_t m, int64_t k, float eps, int qmax, float lambda, float* out,
                        float* scales);
// its clipped straight-through gradient dx = g * ((1 - lambda) + lambda * [|x| s / qmax <= clip]);
void act_ste_backward_ref(const float* g, const float* x, const float* scales, int64_t m, int64_t k, int qmax,
                          float clip, float lambda, float* dx);
// ternary weights, d = code * gamma with gamma indexed as weight_codes_ref.
void ternary_fake_quant_ref(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                            const float* gamma, float eps, float lambda, float* out);

// Per-token int8 absmax quantization of x [M, K] (row-major): s[m] = 127 / max(max|x[m]|, eps),
// q[m, k] = clamp(round_half_away(x * s), -128, 127), written with row stride kp (zeros past K).
// rowsum[m] = sum_k q[m, k] (for the offset formulation). With norm_weight, x is first RMS-normalised
// as rms_norm_ref does. A row holding NaN or infinity gets scale NaN and codes 0.
void quantize_activations_ref(const float* x, int64_t m, int64_t k, int64_t kp, float eps, const float* norm_weight,
                              float norm_eps, int8_t* q, float* scales, int32_t* rowsums);

// Absmean ternary quantization of W [N, K]: scales per tensor (1), channel (N) or group (N x groups),
// each the canonical double sum of |w| over its elements divided by their count, rounded to float;
// code = clamp(round_half_away(w / (gamma + eps)), -1, 1).
void quantize_ternary_ref(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps, int8_t* codes,
                          float* scales);

// Packing of int8 codes [N, K] into words [N, words_per_row(K)] and back.
void pack_ternary_ref(const int8_t* codes, int64_t n, int64_t k, uint32_t* packed);
void unpack_ternary_ref(const uint32_t* packed, int64_t n, int64_t k, int8_t* codes);

// y_int[m, n] = sum_k q[m, k] * w[n, k] with int32 accumulators, per scale group: out has
// [M, N, groups] entries (groups = 1 for per tensor / channel).
void int_matmul_ref(const int8_t* q, int64_t kp, const uint32_t* packed, int64_t m, int64_t n, int64_t k,
                    int64_t groups, int64_t group, int32_t* out);
// The same through the offset codes: sum_k q * (w + 1) - sum_k q (exactly equal; a check of the
// algebra the offset formulation relies on). Per tensor / channel only.
void int_matmul_offset_ref(const int8_t* q, int64_t kp, const uint32_t* packed, const int32_t* rowsums, int64_t m,
                           int64_t n, int64_t k, int32_t* out);

// y[m, n] = sum_g y_int[m, n, g] * wscale[n, g] / xscale[m] (+ bias[n]).
void epilogue_ref(const int32_t* y_int, int64_t m, int64_t n, int64_t groups, const float* wscales,
                  int64_t scale_stride_n, const float* xscales, const float* bias, float* y);

}  // namespace bitqat::cuda
