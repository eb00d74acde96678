#include "bitlinear/quantizers.hpp"

#include "bitlinear/quant_spec.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "bitlinear/quant_kernels.hpp"
#include "core/error.hpp"

namespace bitqat::bitlinear {
namespace {

void check_weight(const at::Tensor& w, const WeightQuantSpec& spec) {
  if (w.dim() < 2) {
    throw std::invalid_argument(fmt::format("quantize_weight: expected a 2-D or 4-D weight, got {}-D", w.dim()));
  }
  if (spec.granularity == Granularity::kPerKernel && w.dim() != 4) {
    throw std::invalid_argument(
        fmt::format("quantize_weight: per_kernel scales need a 4-D convolution weight, got shape [{}]",
                    fmt::join(w.sizes(), ", ")));
  }
  if (spec.granularity == Granularity::kPerGroup && spec.group_size < 1) {
    throw std::invalid_argument(fmt::format("quantize_weight: group_size must be >= 1, got {}", spec.group_size));
  }
}

// The weight as [rows, cols] and its scale group (cols: one per row; per tensor: all of it).
struct Grouping {
  int64_t group;
  bool per_tensor;
};
Grouping grouping(const at::Tensor& w, const WeightQuantSpec& spec) {
  const int64_t cols = w.numel() / w.size(0);
  switch (spec.granularity) {
    case Granularity::kPerTensor:
      return {cols, true};
    case Granularity::kPerChannel:
      return {cols, false};
    case Granularity::kPerGroup:
      return {spec.group_size, false};
    case Granularity::kPerKernel:
      return {w.size(2) * w.size(3), false};
  }
  throw std::logic_error("unknown granularity");
}

}  // namespace

const WeightQuantTraits& traits(WeightQuant type) {
  static const WeightQuantTraits kTable[] = {
      {"none", 32.0, 0, 0},
      {"ternary", 1.584962500721156, -1, 1},  // log2(3)
      {"binary", 1.0, -1, 1},
  };
  return kTable[static_cast<int>(type)];
}

std::string to_string(WeightQuant v) { return traits(v).name; }
std::string to_string(Granularity v) {
  switch (v) {
    case Granularity::kPerTensor:
      return "per_tensor";
    case Granularity::kPerChannel:
      return "per_channel";
    case Granularity::kPerGroup:
      return "per_group";
    case Granularity::kPerKernel:
      return "per_kernel";
  }
  return "?";
}
std::string to_string(ActQuant v) {
  switch (v) {
    case ActQuant::kNone:
      return "none";
    case ActQuant::kPerToken:
      return "per_token";
    case ActQuant::kPerTensor:
      return "per_tensor";
  }
  return "?";
}
std::string to_string(Estimator v) { return v == Estimator::kIdentity ? "identity" : "clipped"; }

bool parse(const std::string& s, WeightQuant* out) {
  for (auto v : {WeightQuant::kNone, WeightQuant::kTernary, WeightQuant::kBinary}) {
    if (s == to_string(v)) return *out = v, true;
  }
  return false;
}
bool parse(const std::string& s, Granularity* out) {
  for (auto v : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup, Granularity::kPerKernel}) {
    if (s == to_string(v)) return *out = v, true;
  }
  return false;
}
bool parse(const std::string& s, ActQuant* out) {
  for (auto v : {ActQuant::kNone, ActQuant::kPerToken, ActQuant::kPerTensor}) {
    if (s == to_string(v)) return *out = v, true;
  }
  return false;
}
bool parse(const std::string& s, Estimator* out) {
  for (auto v : {Estimator::kIdentity, Estimator::kClipped}) {
    if (s == to_string(v)) return *out = v, true;
  }
  return false;
}

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
  if (spec.type == WeightQuant::kNone) {
    throw std::invalid_argument("quantize_weight: weight type is none (nothing to quantize)");
  }
  check_weight(w_in, spec);
  const auto w = w_in.detach();
  const auto g = grouping(w, spec);
  auto k = kernels::weight_codes(w.reshape({w.size(0), -1}).contiguous(), g.group, g.per_tensor,
                                 spec.type == WeightQuant::kBinary, spec.eps);
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

at::Tensor dequantize_weight(const QuantizedWeight& q) {
  return q.codes.to(q.scales.scalar_type()) * expand_scales(q.scales, q.spec, q.codes.sizes());
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
