// Straight-through estimators: fake quantization whose forward is Q(x) and whose backward is the
// identity or the clipped identity, blended by lambda: out = x + lambda * (Q(x) - x) in the forward,
// so lambda = 0 is the full-precision value exactly and lambda = 1 is the quantized one.
#pragma once
#include <ATen/ATen.h>

#include "bitlinear/quantizers.hpp"

namespace bitqat::bitlinear {

// Autograd-aware fake quantization (float in, same dtype out; quantization math in float32, or
// float64 for double inputs). Scales are constants in the backward pass (standard STE). Gradient:
//   identity: g
//   clipped:  g * ((1 - lambda) + lambda * mask), mask = 1 where |w| / scale <= clip (weights) or
//             |x| * s / qmax <= clip (activations), else 0
// so lambda = 0 is the exact derivative of the identity and lambda = 1 the clipped STE.
// A type of kNone returns the input itself. A lambda outside [0, 1] throws std::invalid_argument.
at::Tensor fake_quantize_weight(const at::Tensor& w, const WeightQuantSpec& spec, double lambda = 1.0);
at::Tensor fake_quantize_activation(const at::Tensor& x, const ActQuantSpec& spec, double lambda = 1.0);

// Fake quantization with a learned per-output-row scale (spec.scale == kLearned): w [out, in] and
// scale [out], both float32 (or both float64), autograd-aware in both. With s = max(scale, eps),
// v = w / s and q the codes of quantize_weight_learned (ternary clamp(round_half_away(v), -1, 1)):
//   forward   out = w + lambda (q s - w)
//   d out/d w = the weight STE as in fake_quantize_weight (identity, or clipped where |v| <= clip)
//   d L/d scale[o] = lambda * g_s * sum_i G[o, i] * d(q s)/ds[o, i] at s (also where the floor holds:
//     the floor passes the gradient straight through, so that a scale pushed below it can return), with LSQ's
//     step-size gradient (Esser et al. 2020, arXiv 1902.08153, eq. 3): d(q s)/ds = q - v where
//     -1 <= v <= 1 (round's STE), q where v lies beyond (the clamp); binary weights: q. g_s =
//     1 / sqrt(in * Q_p), Q_p = 1 (section 2.2: the scale's gradient is brought to the weights'
//     magnitude; AdamW's update is almost invariant to it).
// The LSQ surrogate whose exact derivative this is: q s = w + s * stopgrad(q - v) inside the clamp,
// s * q outside. Throws std::invalid_argument as quantize_weight_learned does, or for a lambda outside
// [0, 1].
at::Tensor fake_quantize_weight_learned(const at::Tensor& w, const at::Tensor& scale, const WeightQuantSpec& spec,
                                        double lambda = 1.0);

// The clipped straight-through estimator's masks: bool, true where the gradient passes, in the
// input's shape; undefined for the identity estimator (it passes everywhere). Every clipped STE of
// bitlinear (the estimators above, the exact linears of quantized_linear.hpp) uses these.
// Weights w [out, ...] quantized as q: |w| / max(scale, eps) <= clip, each w with its own scale.
at::Tensor clipped_ste_mask(const at::Tensor& w, const QuantizedWeight& q);
// Activations x [..., K] with the scales s of their codes (x ~= code / s) broadcast over x ([..., 1]
// per token, [1] per tensor): |x| * s / qmax <= clip, qmax = 2^(bits-1) - 1. In the scales' dtype.
at::Tensor clipped_ste_mask(const at::Tensor& x, const at::Tensor& scales, const ActQuantSpec& spec);

}  // namespace bitqat::bitlinear
