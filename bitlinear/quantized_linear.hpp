// The fully quantized linear layer (lambda_w = lambda_a = 1) computed from its integer codes:
//   y[m, n] = (sum_g acc[m, n, g] * gamma[n, g]) / s[m] + bias[n],  acc = sum_k cx[m, k] * cw[n, k]
// with cx the int8 activation codes (scale s per token or per tensor) and cw the ternary / binary
// weight codes (scale gamma per tensor, channel or group). The products of codes are summed exactly:
// for float32 inputs quantized per token by an int8 x int8 -> int32 matmul (at::_int_mm, oneDNN's
// s8s8s32 gemm, on CPUs with AVX-512 VNNI; on others at::_int_mm is a scalar loop, and the codes
// are multiplied as float32 by sgemm, exact by the bound below); otherwise (float64 inputs for
// gradient checks, per-tensor activation scales, bf16 widened to float32) by a matmul of the codes
// held in the compute dtype, exact while each partial sum stays below 2^24 (float32) or 2^53.
// oneDNN's int8 kernels without VNNI add pairs of products in int16 after shifting one operand by
// 128; with activation codes in [-127, 127] (a finite row's largest |x| maps to 127, so -128 never
// occurs) and weight codes in [-1, 1] a pair stays below 2^15, so the sums are exact on every
// instruction set (tested under ONEDNN_MAX_CPU_ISA = SSE41, AVX2, AVX512_CORE and the CPU's best).
// Each sum then converts to float exactly while |acc| <= 128 K < 2^24, i.e. for K < 131072.
// The scales are applied in the order of the W1.58A8 reference epilogue (cuda/reference.hpp
// epilogue_ref), so this layer computes bit for bit what PackedBitLinear computes on the CPU. The
// fake-quant formula (x_q W_q^T in float) is the same value up to float rounding.
//
// Backward: the straight-through estimator of the fake-quant path at lambda 1 (bitlinear/estimators):
// grad_x = (g W_deq) * mask_a, grad_w = (g^T X_deq) * mask_w (masks 1 for the identity estimator),
// from the saved int8 codes and scales (no float copy of the activations is kept).
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "bitlinear/quantizers.hpp"

namespace bitqat::bitlinear {

// Whether quantized_linear serves this input: both quantizers on, a CPU tensor, K small enough for
// the integer sums to convert to float exactly (K < 131072; any K for double inputs).
bool quantized_linear_applicable(const at::Tensor& x, const WeightQuantSpec& w, const ActQuantSpec& a);

// The activation codes of an input ([M, K]: int8 for float32 CPU inputs quantized per token, else
// the integer values -128..127 held in the compute dtype) and their scales ([M] per token, [1] per
// tensor): computed once when several layers read the same input (q, k, v).
struct ActCodes {
  at::Tensor codes;
  at::Tensor scales;
};
ActCodes quantize_input_codes(const at::Tensor& x, const ActQuantSpec& spec);

// x [..., K] float32 / float64 (or bf16, widened), weight [N, K], bias [N] or undefined ->
// [..., N] in x's dtype. Autograd-aware in x (through the straight-through estimator), weight and
// bias; `codes` must be quantize_input_codes(x, aspec).
at::Tensor quantized_linear(const at::Tensor& x, const ActCodes& codes, const at::Tensor& weight,
                            const at::Tensor& bias, const WeightQuantSpec& wspec, const ActQuantSpec& aspec);
at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const WeightQuantSpec& wspec, const ActQuantSpec& aspec);

// ---- several exact linears on one input, with the RMSNorm (and relu^2) before them fused ----------
// y_i = quantized_linear(n(a(x)), W_i, b_i) for every i (up to 3), one autograd node: a = relu(x)^2 when relu2
// (else the identity), n = RMSNorm with `weight` [K] (else the identity). The forward computes each
// row's norm, codes and scale in one pass (kernels::norm_quantize_rows), so the normalized float
// activations are never written, and its outputs equal the composed modules bit for bit
// (RMSNorm::forward_float, then quantized_linear on each weight). The backward sums g_i W_deq_i into
// one buffer, dequantizes the shared input once for all weight gradients, and runs the norm's (and
// relu^2's) backward once. Gradients for x, the norm weight, the weights and the biases.
struct InputNorm {
  at::Tensor weight;   // RMSNorm weight [K] float32, or undefined: no norm
  double eps = 1e-6;   // the norm's epsilon
  bool relu2 = false;  // relu(x)^2 before the norm (needs the norm)
};

// Whether quantized_linears serves this input: x float32 on the CPU, per-token activation codes with
// the identity activation estimator (a clipped weight estimator's mask is supported), 1 to 3 weight
// specs each quantized_linear_applicable (quantized, not per kernel, K < 131072), relu2 only with a
// norm, and a norm weight float32 on the CPU with K entries.
bool quantized_linears_applicable(const at::Tensor& x, const InputNorm& pre, const std::vector<WeightQuantSpec>& w,
                                  const ActQuantSpec& a);
// x [..., K] (any strides) -> one [..., N_i] float32 tensor per weight [N_i, K]; biases[i] [N_i] or
// undefined. Throws std::invalid_argument when the lists are empty, longer than 3 or of different
// sizes, a weight or bias has the wrong shape, or quantized_linears_applicable fails.
std::vector<at::Tensor> quantized_linears(const at::Tensor& x, const InputNorm& pre,
                                          const std::vector<at::Tensor>& weights,
                                          const std::vector<at::Tensor>& biases,
                                          const std::vector<WeightQuantSpec>& wspecs, const ActQuantSpec& aspec);

}  // namespace bitqat::bitlinear
