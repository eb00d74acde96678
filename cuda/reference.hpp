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
