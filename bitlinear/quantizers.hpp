// Weight and activation quantizers of BitNet-style training: a table of weight types (ternary
// absmean, binary sign) holding their functions, scale granularities, and quantize / dequantize on
// plain tensors. No autograd here: the straight-through estimators live in estimators.hpp.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <utility>

#include "bitlinear/quant_kernels.hpp"
#include "core/enum_name.hpp"

namespace bitqat::bitlinear {

// kCount is the number of types, not a type.
enum class WeightQuant { kNone, kTernary, kBinary, kCount };
// kPerChannel: one scale per output row (dim 0; for a convolution, per output filter as in
// XNOR-Net). kPerGroup: per G consecutive input weights of a row (the weight flattened to
// [out, in*kh*kw]). kPerKernel: one scale per (out, in) kh x kw kernel of a convolution; rejected
// for 2-D (linear) weights.
enum class Granularity { kPerTensor, kPerChannel, kPerGroup, kPerKernel };
enum class ActQuant { kNone, kPerToken, kPerTensor };
// kIdentity: d q(x)/dx = 1. kClipped: 1 where |x| <= clip (in units of the scale), else 0.
enum class Estimator { kIdentity, kClipped };
// Where a weight scale comes from. kAbsmean: computed from the weights at every forward pass (BitNet
// b1.58's gamma = mean |W|; binary: mean |W|). kLearned: a trained parameter per output row,
// initialised from absmean, with LSQ's gradient (Esser et al. 2020, "Learned Step Size
// Quantization", arXiv 1902.08153, eq. 3 and section 2.2; used for ternary weights by ParetoQ, Liu et
// al. 2025, arXiv 2502.02631): estimators.hpp fake_quantize_weight_learned.
enum class ScaleSource { kAbsmean, kLearned };

// Config names (quant.weight.granularity, quant.activation.type, quant.*.estimator); the weight
// types' names are their traits rows' (kWeightQuantNames below).
inline constexpr std::array<core::EnumName<Granularity>, 4> kGranularityNames = {{
    {Granularity::kPerTensor, "per_tensor"},
    {Granularity::kPerChannel, "per_channel"},
    {Granularity::kPerGroup, "per_group"},
    {Granularity::kPerKernel, "per_kernel"},
}};
inline constexpr std::array<core::EnumName<ActQuant>, 3> kActQuantNames = {{
    {ActQuant::kNone, "none"},
    {ActQuant::kPerToken, "per_token"},
    {ActQuant::kPerTensor, "per_tensor"},
}};
inline constexpr std::array<core::EnumName<Estimator>, 2> kEstimatorNames = {{
    {Estimator::kIdentity, "identity"},
    {Estimator::kClipped, "clipped"},
}};
inline constexpr std::array<core::EnumName<ScaleSource>, 2> kScaleSourceNames = {{
    {ScaleSource::kAbsmean, "absmean"},
    {ScaleSource::kLearned, "learned"},
}};

struct WeightQuantSpec {
  WeightQuant type = WeightQuant::kTernary;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 128;  // kPerGroup only
  Estimator estimator = Estimator::kIdentity;
  double clip = 1.0;  // kClipped: |w| / scale beyond which the gradient is zero
  double eps = 1e-5;
  ScaleSource scale = ScaleSource::kAbsmean;  // kLearned: per channel only (BitLinear's weight_scale)
};

struct ActQuantSpec {
  ActQuant type = ActQuant::kPerToken;
  int bits = 8;  // 2..8; qmax = 2^(bits-1) - 1
  Estimator estimator = Estimator::kIdentity;
  double clip = 1.0;  // kClipped: |x| * s / qmax beyond which the gradient is zero
  double eps = 1e-5;
};

// How the scales of a spec group a weight of shape [out, ...] seen as [rows, cols] = [out, numel /
// out]: one scale per `group` consecutive columns of a row (per channel: group = cols; per group:
// spec.group_size; per kernel: group = kh * kw of a 4-D weight), or one for the whole tensor
// (per_tensor, group = cols). Throws std::invalid_argument for per_kernel scales of a weight that is
// not 4-D, or a group_size below 1.
struct ScaleGrouping {
  int64_t group;
  bool per_tensor;
};
ScaleGrouping scale_grouping(const WeightQuantSpec& spec, at::IntArrayRef weight_shape);

// The weight types' traits (ggml's type_traits): one row per type, in the enum's order. A row holds
// what the type is (its config name, bits, code range) and its functions on the weight seen as
// [rows, cols] with a ScaleGrouping (group, per_tensor); quantize_weight, dequantize_weight, the
// estimators and the config names read it, so a new type is an enum value and a row here (with its
// tensor kernel in quant_kernels.hpp and its element in cuda/quant_codes.hpp). Every type
// dequantizes as code * scale: the exact integer linears (quantized_linear.hpp) rely on it.
struct WeightQuantTraits {
  WeightQuant type;
  const char* name;  // quant.weight.type in a config
  double bits;       // information bits per weight
  int8_t code_min;   // smallest code
  int8_t code_max;   // largest code
  // Codes int8 [rows, cols] and scales of w [rows, cols] (kernels::WeightCodes); null for kNone.
  kernels::WeightCodes (*quantize)(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps);
  // Values code * scale [rows, cols] of int8 codes and the scales quantize returned, in the scales'
  // dtype (kernels::scale_codes); null for kNone.
  at::Tensor (*dequantize)(const at::Tensor& codes2d, const at::Tensor& scales, int64_t group, bool per_tensor);
  // The fused fake quantization w + lambda (dequantize(quantize(w)) - w) of a float32 w [rows, cols]
  // with its scales, the same values in one pass (kernels::ternary_fake_quant); null where the
  // estimators compose quantize and dequantize.
  std::pair<at::Tensor, at::Tensor> (*fake_quantize)(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps,
                                                     double lambda);
};

inline constexpr WeightQuantTraits kWeightQuantTraits[] = {
    {WeightQuant::kNone, "none", 32.0, 0, 0, nullptr, nullptr, nullptr},
    {WeightQuant::kTernary, "ternary", 1.584962500721156 /* log2(3) */, -1, 1, kernels::ternary_codes,
     kernels::scale_codes, kernels::ternary_fake_quant},
    {WeightQuant::kBinary, "binary", 1.0, -1, 1, kernels::binary_codes, kernels::scale_codes, nullptr},
};
static_assert(std::size(kWeightQuantTraits) == static_cast<size_t>(WeightQuant::kCount),
              "one traits row per weight type");
constexpr bool weight_quant_rows_in_enum_order() {
  for (size_t i = 0; i < std::size(kWeightQuantTraits); ++i) {
    if (kWeightQuantTraits[i].type != static_cast<WeightQuant>(i)) return false;
  }
  return true;
}
static_assert(weight_quant_rows_in_enum_order(), "the traits rows follow the enum's order");

// The weight types' config names (quant.weight.type), taken from the traits rows.
constexpr std::array<core::EnumName<WeightQuant>, std::size(kWeightQuantTraits)> weight_quant_names() {
  std::array<core::EnumName<WeightQuant>, std::size(kWeightQuantTraits)> names{};
  for (size_t i = 0; i < names.size(); ++i) names[i] = {kWeightQuantTraits[i].type, kWeightQuantTraits[i].name};
  return names;
}
inline constexpr auto kWeightQuantNames = weight_quant_names();

// The row of a type; throws std::invalid_argument for a value that names none (kCount or beyond).
const WeightQuantTraits& traits(WeightQuant type);

std::string to_string(WeightQuant v);
std::string to_string(Granularity v);
std::string to_string(ActQuant v);
std::string to_string(Estimator v);
std::string to_string(ScaleSource v);
// Parsers return false on an unknown name (callers report the config key).
bool parse(const std::string& s, WeightQuant* out);
bool parse(const std::string& s, Granularity* out);
bool parse(const std::string& s, ActQuant* out);
bool parse(const std::string& s, Estimator* out);
bool parse(const std::string& s, ScaleSource* out);

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

// Learned per-output-row scales (spec.scale == kLearned, spec.granularity == kPerChannel): w [out, in]
// float32 or float64, scale [out] in w's dtype. The scale used is s = max(scale, spec.eps) (a scale
// trained to zero or below stays positive). Ternary: code = clamp(round_half_away(w / s), -1, 1);
// binary: the sign codes of quantize_weight (of w minus its row mean), the scale s. Returns the codes
// and s ([out], w's dtype): dequantize_weight gives code * s. Throws std::invalid_argument for another
// granularity, a type without codes, or shapes that do not match.
QuantizedWeight quantize_weight_learned(const at::Tensor& w, const at::Tensor& scale, const WeightQuantSpec& spec);
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
