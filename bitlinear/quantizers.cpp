#include "bitlinear/quantizers.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "core/error.hpp"

namespace bitqat::bitlinear {
namespace {

// Quantization arithmetic runs in float32, or in double for double inputs (gradient checks).
at::ScalarType compute_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The weight as [out, rest] (rest = in * kh * kw).
at::Tensor as_rows(const at::Tensor& w) { return w.reshape({w.size(0), -1}); }

int64_t group_count(int64_t rest, int64_t group) { return (rest + group - 1) / group; }

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

// Mean of `v` (already |W| or W) per scale group: shapes as documented in the header.
at::Tensor group_mean(const at::Tensor& v, const WeightQuantSpec& spec) {
  switch (spec.granularity) {
    case Granularity::kPerTensor:
      return v.mean().reshape({1});
    case Granularity::kPerChannel:
      return as_rows(v).mean(1);
    case Granularity::kPerKernel:
      return v.mean({2, 3});
    case Granularity::kPerGroup: {
      const auto rows = as_rows(v);
      const int64_t rest = rows.size(1);
      const int64_t g = spec.group_size;
      const int64_t n = group_count(rest, g);
      const int64_t full = rest / g;
      std::vector<at::Tensor> parts;
      if (full > 0) parts.push_back(rows.narrow(1, 0, full * g).reshape({rows.size(0), full, g}).mean(2));
      if (full < n) parts.push_back(rows.narrow(1, full * g, rest - full * g).mean(1, /*keepdim=*/true));
      return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
    }
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

at::Tensor round_half_away(const at::Tensor& x) { return x.sign() * at::floor(x.abs() + 0.5); }

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
  const auto w = w_in.detach().to(compute_dtype(w_in));
  QuantizedWeight q;
  q.spec = spec;
  const auto abs_mean = group_mean(w.abs(), spec);
  if (spec.type == WeightQuant::kTernary) {
    const auto gamma = expand_scales(abs_mean, spec, w.sizes());
    q.codes = round_half_away(w / (gamma + spec.eps)).clamp(-1, 1).to(at::kChar);
  } else {
    // sign(W - mean W) with sign(0) = +1, so every weight gets a code of +-1.
    const auto mu = expand_scales(group_mean(w, spec), spec, w.sizes());
    q.codes = at::where(w - mu >= 0, at::ones_like(w), -at::ones_like(w)).to(at::kChar);
  }
  q.scales = abs_mean.contiguous();
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
  const auto x = x_in.detach().to(compute_dtype(x_in));
  const double qmax = static_cast<double>((1 << (spec.bits - 1)) - 1);
  const auto amax =
      spec.type == ActQuant::kPerToken ? x.abs().amax({-1}, /*keepdim=*/true) : x.abs().max().reshape({1});
  const auto s = qmax / amax.clamp_min(spec.eps);
  QuantizedActivation q;
  q.codes = round_half_away(x * s).clamp(-qmax - 1, qmax).to(at::kChar);
  q.scales = s;
  return q;
}

at::Tensor dequantize_activation(const QuantizedActivation& q) { return q.codes.to(q.scales.scalar_type()) / q.scales; }

}  // namespace bitqat::bitlinear
