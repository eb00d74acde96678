#include "bitlinear/quantizers.hpp"

#include "bitlinear/quant_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "bitlinear/quant_kernels.hpp"
#include "core/error.hpp"

namespace bitqat::bitlinear {

ScaleGrouping scale_grouping(const WeightQuantSpec& spec, at::IntArrayRef shape) {
  int64_t cols = 1;
  for (size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
  switch (spec.granularity) {
    case Granularity::kPerTensor:
      return {cols, true};
    case Granularity::kPerChannel:
      return {cols, false};
    case Granularity::kPerGroup:
      if (spec.group_size < 1) {
        throw std::invalid_argument(fmt::format("per_group scales: group_size must be >= 1, got {}", spec.group_size));
      }
      return {spec.group_size, false};
    case Granularity::kPerKernel:
      if (shape.size() != 4) {
        throw std::invalid_argument(
            fmt::format("per_kernel scales need a 4-D convolution weight, got shape [{}]", fmt::join(shape, ", ")));
      }
      return {shape[2] * shape[3], false};
  }
  throw std::logic_error("unknown granularity");
}

const WeightQuantTraits& traits(WeightQuant type) {
  const auto i = static_cast<size_t>(type);
  if (i >= std::size(kWeightQuantTraits)) {
    throw std::invalid_argument(fmt::format("no weight type has the value {}", static_cast<int>(type)));
  }
  return kWeightQuantTraits[i];
}

std::string to_string(WeightQuant v) { return traits(v).name; }
std::string to_string(Granularity v) { return core::name_of(kGranularityNames, v); }
std::string to_string(ActQuant v) { return core::name_of(kActQuantNames, v); }
std::string to_string(Estimator v) { return core::name_of(kEstimatorNames, v); }
std::string to_string(ScaleSource v) { return core::name_of(kScaleSourceNames, v); }

bool parse(const std::string& s, WeightQuant* out) { return core::value_of(kWeightQuantNames, s.c_str(), out); }
bool parse(const std::string& s, Granularity* out) { return core::value_of(kGranularityNames, s.c_str(), out); }
bool parse(const std::string& s, ActQuant* out) { return core::value_of(kActQuantNames, s.c_str(), out); }
bool parse(const std::string& s, Estimator* out) { return core::value_of(kEstimatorNames, s.c_str(), out); }
bool parse(const std::string& s, ScaleSource* out) { return core::value_of(kScaleSourceNames, s.c_str(), out); }

void check_lambda(double lambda, const char* what) {
  if (!(lambda >= 0.0 && lambda <= 1.0)) {
    throw std::invalid_argument(fmt::format("{} = {} is outside [0, 1]", what, lambda));
  }
}

at::Tensor round_half_away(const at::Tensor& x) {
  // Exact for every float: x - trunc(x) is exact, so the comparison with 0.5 decides the tie itself
  // (floor(|x| + 0.5) would round 0.49999997f up, because |x| + 0.5 rounds).
  const auto t = at::trunc(x);
  return at::where((x - t).abs() >= 0.5, t + x.sign(), t);
}

at::Tensor expand_scales(const at::Tensor& scales, const WeightQuantSpec& spec, at::IntArrayRef shape) {
  const int64_t out = shape[0];
  switch (spec.granularity) {
    case Granularity::kPerTensor:
      return scales.reshape({}).expand(shape);
    case Granularity::kPerChannel: {
      std::vector<int64_t> view(shape.size(), 1);
      view[0] = out;
      return scales.reshape(view).expand(shape);
    }
    case Granularity::kPerKernel:
      return scales.reshape({shape[0], shape[1], 1, 1}).expand(shape);
    case Granularity::kPerGroup: {
      int64_t rest = 1;
      for (size_t i = 1; i < shape.size(); ++i) rest *= shape[i];
      return scales.repeat_interleave(spec.group_size, 1).narrow(1, 0, rest).reshape(shape);
    }
  }
  throw std::logic_error("unknown granularity");
}

QuantizedWeight quantize_weight(const at::Tensor& w_in, const WeightQuantSpec& spec) {
  const auto& row = traits(spec.type);
  if (!row.quantize) {
    throw std::invalid_argument(fmt::format("quantize_weight: weight type is {} (nothing to quantize)", row.name));
  }
  if (w_in.dim() < 2) {
    throw std::invalid_argument(fmt::format("quantize_weight: expected a 2-D or 4-D weight, got {}-D", w_in.dim()));
  }
  const auto w = w_in.detach();
  const auto g = scale_grouping(spec, w.sizes());
  auto k = row.quantize(w.reshape({w.size(0), -1}).contiguous(), g.group, g.per_tensor, spec.eps);
  QuantizedWeight q;
  q.spec = spec;
  q.codes = k.codes.view(w.sizes());
  switch (spec.granularity) {
    case Granularity::kPerTensor:
    case Granularity::kPerGroup:
      q.scales = k.gamma;
      break;
    case Granularity::kPerChannel:
      q.scales = k.gamma.reshape({w.size(0)});
      break;
    case Granularity::kPerKernel:
      q.scales = k.gamma.reshape({w.size(0), w.size(1)});
      break;
  }
  return q;
}

QuantizedWeight quantize_weight_learned(const at::Tensor& w_in, const at::Tensor& scale, const WeightQuantSpec& spec) {
  const auto& row = traits(spec.type);
  if (!row.quantize) {
    throw std::invalid_argument(fmt::format("quantize_weight_learned: weight type is {} (nothing to quantize)", row.name));
  }
  if (spec.granularity != Granularity::kPerChannel) {
    throw std::invalid_argument(fmt::format("quantize_weight_learned: learned scales are per_channel, got {}",
                                            to_string(spec.granularity)));
  }
  if (w_in.dim() != 2 || scale.dim() != 1 || scale.size(0) != w_in.size(0)) {
    throw std::invalid_argument(fmt::format("quantize_weight_learned: expected w [out, in] and scale [out], got [{}] and [{}]",
                                            fmt::join(w_in.sizes(), ", "), fmt::join(scale.sizes(), ", ")));
  }
  const auto w = w_in.detach();
  QuantizedWeight q;
  q.spec = spec;
  q.scales = scale.detach().to(w.scalar_type()).clamp_min(spec.eps);
  if (spec.type == WeightQuant::kTernary) {
    q.codes = round_half_away(w / q.scales.reshape({-1, 1})).clamp(-1, 1).to(at::kChar);
  } else {
    q.codes = quantize_weight(w, spec).codes;
  }
  return q;
}

at::Tensor dequantize_weight(const QuantizedWeight& q) {
  const auto& row = traits(q.spec.type);
  if (!row.dequantize) {
    throw std::invalid_argument(fmt::format("dequantize_weight: weight type is {} (no codes)", row.name));
  }
  const auto g = scale_grouping(q.spec, q.codes.sizes());
  const int64_t rows = q.codes.size(0);
  const auto scales = g.per_tensor ? q.scales.reshape({1}) : q.scales.reshape({rows, -1});
  return row.dequantize(q.codes.reshape({rows, -1}).contiguous(), scales.contiguous(), g.group, g.per_tensor)
      .view(q.codes.sizes());
}

QuantizedActivation quantize_activation(const at::Tensor& x_in, const ActQuantSpec& spec) {
  if (spec.type == ActQuant::kNone) throw std::invalid_argument("quantize_activation: type is none");
  if (spec.bits < 2 || spec.bits > 8) {
    throw std::invalid_argument(fmt::format("quantize_activation: bits must be in [2, 8], got {}", spec.bits));
  }
  const auto x = x_in.detach();
  QuantizedActivation q;
  if (spec.type == ActQuant::kPerTensor) {
    auto k = kernels::quantize_tensor(x, spec.eps, spec.bits);
    q.codes = k.codes;
    q.scales = k.scales;
    return q;
  }
  if (x.dim() < 1) throw std::invalid_argument("quantize_activation: per_token needs at least one dimension");
  const int64_t width = x.size(-1);
  auto k = kernels::quantize_rows(x.reshape({-1, width}).contiguous(), spec.eps, spec.bits);
  q.codes = k.codes.view(x.sizes());
  auto scale_shape = x.sizes().vec();
  scale_shape.back() = 1;
  q.scales = k.scales.view(scale_shape);
  return q;
}

at::Tensor dequantize_activation(const QuantizedActivation& q) { return q.codes.to(q.scales.scalar_type()) / q.scales; }

}  // namespace bitqat::bitlinear
