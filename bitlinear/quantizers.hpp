// Weight and activation quantizers of BitNet-style training: a table of types (ternary absmean,
// binary sign) and scale granularities, with quantize / dequantize on plain tensors. No autograd
// here: the straight-through estimators live in estimators.hpp.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace bitqat::bitlinear {

enum class WeightQuant { kNone, kTernary, kBinary };
// kPerChannel: one scale per output row (dim 0; for a convolution, per output filter as in
// XNOR-Net). kPerGroup: per G consecutive input weights of a row (the weight flattened to
// [out, in*kh*kw]). kPerKernel: one scale per (out, in) kh x kw kernel of a convolution; rejected
// for 2-D (linear) weights.
enum class Granularity { kPerTensor, kPerChannel, kPerGroup, kPerKernel };
enum class ActQuant { kNone, kPerToken, kPerTensor };
// kIdentity: d q(x)/dx = 1. kClipped: 1 where |x| <= clip (in units of the scale), else 0.
enum class Estimator { kIdentity, kClipped };

struct WeightQuantSpec {
  WeightQuant type = WeightQuant::kTernary;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 128;  // kPerGroup only
  Estimator estimator = Estimator::kIdentity;
  double clip = 1.0;  // kClipped: |w| / scale beyond which the gradient is zero
  double eps = 1e-5;
};

struct ActQuantSpec {
  ActQuant type = ActQuant::kPerToken;
  int bits = 8;  // 2..8; qmax = 2^(bits-1) - 1
  Estimator estimator = Estimator::kIdentity;
  double clip = 1.0;  // kClipped: |x| * s / qmax beyond which the gradient is zero
  double eps = 1e-5;
};

// Traits table (ggml style): one row per weight type.
struct WeightQuantTraits {
  const char* name;
  double bits;      // information bits per weight
  int8_t code_min;  // smallest code
  int8_t code_max;  // largest code
};
const WeightQuantTraits& traits(WeightQuant type);

std::string to_string(WeightQuant v);
std::string to_string(Granularity v);
std::string to_string(ActQuant v);
std::string to_string(Estimator v);
// Parsers return false on an unknown name (callers report the config key).
bool parse(const std::string& s, WeightQuant* out);
bool parse(const std::string& s, Granularity* out);
bool parse(const std::string& s, ActQuant* out);
bool parse(const std::string& s, Estimator* out);

// Codes (int8, same shape as the weight) and scales such that dequantize = codes * scale.
// Scale shapes: per tensor [1]; per channel [out]; per group [out, ceil(in / G)]; per kernel
// [out, in] (4-D weights only).
struct QuantizedWeight {
  at::Tensor codes;   // int8, {-1,0,1} (ternary) or {-1,1} (binary)
  at::Tensor scales;  // float32 (float64 for double weights)
  WeightQuantSpec spec;
};

// Ternary: gamma = mean|W| over the group; code = clamp(round_half_away(W / (gamma + eps)), -1, 1).
// Binary: mu = mean(W), code = W - mu >= 0 ? +1 : -1, scale = mean|W| over the group.
// The means are canonical double sums (cuda/quant_codes.hpp): the codes are the same on every CPU,
// instruction set and GPU. Arithmetic in float32 (float64 for double weights).
QuantizedWeight quantize_weight(const at::Tensor& w, const WeightQuantSpec& spec);
at::Tensor dequantize_weight(const QuantizedWeight& q);  // dtype of the scales, shape of the weight
// The scale broadcast to the weight's full shape (used by the estimators and the blend).
at::Tensor expand_scales(const at::Tensor& scales, const WeightQuantSpec& spec, at::IntArrayRef weight_shape);

// Per token (last dim) or per tensor absmax: s = qmax / max(max|x|, eps),
// code = clamp(round_half_away(x*s), -qmax-1, qmax) (cuda/quant_codes.hpp). The eps floor (as in
// BitNet's reference code) makes a row of zeros give codes 0 and a finite scale. A row (or tensor)
// holding NaN or infinity gets scale NaN and codes 0, so everything computed from it is NaN.
struct QuantizedActivation {
  at::Tensor codes;   // int8, shape of x
  at::Tensor scales;  // float32 (float64 for double x): [..., 1] per token, [1] per tensor; x ~= codes / scales
};
QuantizedActivation quantize_activation(const at::Tensor& x, const ActQuantSpec& spec);
at::Tensor dequantize_activation(const QuantizedActivation& q);  // dtype of the scales

// Round half away from zero, the rounding used by every quantizer (documented choice:
// 0.5 -> 1, -0.5 -> -1, 1.5 -> 2), unlike at::round's half-to-even; exact for every float.
at::Tensor round_half_away(const at::Tensor& x);

}  // namespace bitqat::bitlinear
