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

// The clipped straight-through estimator's masks: bool, true where the gradient passes, in the
// input's shape; undefined for the identity estimator (it passes everywhere). Every clipped STE of
// bitlinear (the estimators above, the exact linears of quantized_linear.hpp) uses these.
// Weights w [out, ...] quantized as q: |w| / max(scale, eps) <= clip, each w with its own scale.
at::Tensor clipped_ste_mask(const at::Tensor& w, const QuantizedWeight& q);
// Activations x [..., K] with the scales s of their codes (x ~= code / s) broadcast over x ([..., 1]
// per token, [1] per tensor): |x| * s / qmax <= clip, qmax = 2^(bits-1) - 1. In the scales' dtype.
at::Tensor clipped_ste_mask(const at::Tensor& x, const at::Tensor& scales, const ActQuantSpec& spec);

}  // namespace bitqat::bitlinear
