// Tensor-level entry points of the code-defining arithmetic of cuda/quant_codes.hpp: RMSNorm,
// int8 activation codes and ternary / binary weight codes with their scales. CPU tensors run the
// canonical loops of that header over rows (at::parallel_for; the result does not depend on the
// thread count or the instruction set), CUDA tensors the kernels of cuda/quant.hpp, which compute
// the same values. No autograd here: quantizers.hpp and estimators.hpp build on these.
#pragma once
#include <ATen/ATen.h>

namespace bitqat::bitlinear::kernels {

// The dtype quantization arithmetic runs in: float64 for double inputs (gradient checks), float32
// for everything else (bf16 and fp16 inputs are widened exactly).
at::ScalarType compute_dtype(const at::Tensor& t);

struct RowCodes {
  at::Tensor codes;   // int8 [M, ldq], zeros in columns K..ldq
  at::Tensor scales;  // [M] in the compute dtype; x ~= code / scale; NaN for a non-finite row
};

// Per-row absmax codes of x [M, K] (contiguous). qmax = 2^(bits-1) - 1. ldq >= K (default K). With
// norm_weight [K], each row is first RMS-normalised as rms_norm() does (the fused SubLN).
// CPU: float32 or float64; CUDA: float32 or bf16 (scales float32).
RowCodes quantize_rows(const at::Tensor& x2d, double eps, int bits, int64_t ldq = -1,
                       const at::Tensor& norm_weight = {}, double norm_eps = 1e-6);

// Absmax codes of a whole tensor: codes int8 of x's shape, scales [1].
RowCodes quantize_tensor(const at::Tensor& x, double eps, int bits);

// RMSNorm of x [M, K] (contiguous) with weight w [K] (or undefined: 1): y [M, K] and r [M]
// (1 / root mean square) in the compute dtype; y = (x * r) * w.
std::pair<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x2d, const at::Tensor& w, double eps);

struct WeightCodes {
  at::Tensor codes;  // int8 [rows, cols]
  at::Tensor gamma;  // mean |w| per group: [rows, groups], or [1] per tensor (compute dtype)
  at::Tensor mean;   // binary only: mean w per group, same shape as gamma
};

// Codes of w [rows, cols] (contiguous) with one scale per `group` consecutive columns of a row (the
// last may be shorter; group = cols: per channel) or, per_tensor, one scale for all. Ternary:
// clamp(round(w / (gamma + eps)), -1, 1); binary: sign(w - mean) (sign(0) = +1).
WeightCodes weight_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, bool binary, double eps);

// ---- fused passes of the float32 CPU training path (bitlinear/cpu/row_kernels.hpp) --------------
// Each produces exactly the values of the composed definitions above (the same codes and scales, one
// IEEE operation per step); double and CUDA tensors take the composed path in the callers.

// Whether the fused CPU kernels serve this tensor (float32 on the CPU).
bool fused_cpu(const at::Tensor& t);
// Whether the fused fake-quantization passes below (act_fake_quant, act_ste_backward,
// ternary_fake_quant) serve this tensor: float32 on the CPU (row kernels) or on a CUDA device
// (cuda/quant.hpp, the same values bit for bit).
bool fused_fake_quant(const at::Tensor& t);

// Fake-quantized activations of x [M, K]: out = x + lambda * (code / s - x), scales [M].
std::pair<at::Tensor, at::Tensor> act_fake_quant(const at::Tensor& x2d, double eps, int bits, double lambda);
// The straight-through gradient of act_fake_quant: g itself for the identity estimator (clip < 0),
// else g * ((1 - lambda) + lambda * [|x| * s / qmax <= clip]).
at::Tensor act_ste_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& scales, int bits,
                            double clip, double lambda);
// Fake-quantized ternary weights: out = w + lambda * (code * gamma - w), with gamma as weight_codes.
std::pair<at::Tensor, at::Tensor> ternary_fake_quant(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps,
                                                     double lambda);
// w_deq [rows, cols] float32 = codes (int8, contiguous) * gamma per group (per_tensor: gamma [1]).
at::Tensor scale_codes(const at::Tensor& codes, const at::Tensor& gamma, int64_t group, bool per_tensor);
// x_deq [M, K] float32 = codes (int8, contiguous) / s per row (s float32 [M]).
at::Tensor dequant_rows(const at::Tensor& codes, const at::Tensor& scales);
// The exact linear's epilogue (bitlinear/quantized_linear.hpp): acc per group int32 [M, N] (the
// integer sums, each |acc| < 2^24), gamma float32 [N, G]
// (or [1] / [N]), s [M], bias [N] or undefined -> y [M, N].
// reuse_acc: the caller gives the sums up, and with one contiguous group the output is written over
// them (y then shares acc[0]'s storage, viewed as float32).
at::Tensor linear_epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, int64_t gstride,
                           const at::Tensor& scales, const at::Tensor& bias, bool reuse_acc = false);
// The input of the fused exact linears (bitlinear/quantized_linear.hpp quantized_linears): per-token
// codes of n(a(x)) for x [M, K] float32 on the CPU, with a = relu(x)^2 when relu2 (relu keeps NaN and
// maps -0 to +0) else the identity, and n = RMSNorm with norm_weight [K] when defined (as
// rms_norm) else the identity. The normalized values are never stored: codes int8 [M, K] and scales
// [M] equal quantize_rows of the composed tensor bit for bit, and r [M] (undefined without a norm) is
// the norm's 1 / rms for rms_norm_backward. Throws std::invalid_argument for other dtypes or devices, a
// non-contiguous or non-2-D input, bits outside 2..8 or a norm weight without K entries.
struct NormCodes {
  at::Tensor codes, scales, r;
};
NormCodes norm_quantize_rows(const at::Tensor& x2d, double eps, int bits, bool relu2, const at::Tensor& norm_weight,
                             double norm_eps);
// RMSNorm backward: (dx [M, K], dw [K]) from the upstream gradient, x, w and the forward's r [M]. With
// relu2, x is u and the norm read relu(u)^2: dx is then the gradient with respect to u. reuse_grad:
// the caller gives g up, and a contiguous g receives dx (returned as dx; no new buffer).
std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& w,
                                                    const at::Tensor& r, bool relu2 = false, bool reuse_grad = false);

}  // namespace bitqat::bitlinear::kernels
