// Straight-through estimators: fake quantization whose forward is Q(x) and whose backward is the
// identity or the clipped identity, blended by lambda: out = x + lambda * (Q(x) - x) in the forward,
// so lambda = 0 is the full-precision value exactly and lambda = 1 is the quantized one.
#pragma once
#include <ATen/ATen.h>

#include "bitlinear/quantizers.hpp"

namespace bitqat::bitlinear {

// Autograd-aware fake quantization (float in, same dtype out). Gradient w.r.t. w: 1 (identity) or
// the clip mask (clipped) -- scaled by nothing: the STE treats Q as the identity where it passes.
at::Tensor fake_quantize_weight(const at::Tensor& w, const WeightQuantSpec& spec, double lambda = 1.0);
at::Tensor fake_quantize_activation(const at::Tensor& x, const ActQuantSpec& spec, double lambda = 1.0);

}  // namespace bitqat::bitlinear
