#include "bitlinear/quantized_linear.hpp"

#include <ATen/record_function.h>
#include <fmt/format.h>
#include <torch/autograd.h>

#include <stdexcept>

#include "bitlinear/quant_kernels.hpp"

namespace bitqat::bitlinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kExactFloatK = (int64_t{1} << 24) / 128;  // |acc| <= 128 K must stay below 2^24

// The float32 CPU path with per-token scales (int8 codes): integer matmuls (at::_int_mm, int32
// sums) and the row kernels. Other inputs (float64 for gradient checks, per-tensor activation
// scales) run the composed ATen ops on the codes held in the compute dtype.
bool int8_path(const at::Tensor& codes) { return codes.scalar_type() == at::kChar; }

// acc = a b^T for int8 a [M, K], b [N, K]: int32, exact. LibTorch 2.11's CPU at::_int_mm returns
// wrong sums for K = 1 (oneDNN's gemm is handed leading dimensions taken from the strides of a
// size-1 dimension and rejects the call silently; pytorch/pytorch#195066), so K = 1 is the
// broadcast product of the two columns.
at::Tensor int8_product(const at::Tensor& a, const at::Tensor& b) {
  if (a.size(1) == 1) return a.to(at::kInt) * b.to(at::kInt).t();
  return at::_int_mm(a.contiguous(), b.t());
}

// The epilogue of the composed path, in the order of cuda/reference.cpp epilogue_ref: y = 0;
// y += acc_g * gamma_g for each group g in order; y / s; + bias.
at::Tensor epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, const WeightQuantSpec& spec,
                    const at::Tensor& s, const at::Tensor& bias) {
  at::Tensor y = at::zeros_like(acc[0]);
  for (size_t g = 0; g < acc.size(); ++g) {
    at::Tensor scale;
    switch (spec.granularity) {
      case Granularity::kPerTensor:
        scale = gamma.reshape({1, 1});
        break;
      case Granularity::kPerChannel:
        scale = gamma.reshape({1, -1});
        break;
      default:
        scale = gamma.select(1, static_cast<int64_t>(g)).reshape({1, -1});
        break;
    }
    y = y + acc[g] * scale;
  }
  y = y / s;
  if (bias.defined()) y = y + bias.to(y.scalar_type()).reshape({1, -1});
  return y;
}

// The integer sums acc = cx cw^T, one [M, N] matrix per weight group (one for per-tensor and
// per-channel scales): int32 from int8 codes, else exact integer values in the codes' dtype.
std::vector<at::Tensor> code_products(const at::Tensor& cx, const at::Tensor& cw, const WeightQuantSpec& wspec) {
  auto product = [&](const at::Tensor& a, const at::Tensor& b) {
    return int8_path(a) ? int8_product(a, b) : at::mm(a, b.t());
  };
  std::vector<at::Tensor> acc;
  if (wspec.granularity == Granularity::kPerGroup) {
    const int64_t k = cx.size(1), g = wspec.group_size;
    for (int64_t lo = 0; lo < k; lo += g) {
      const int64_t n = std::min(g, k - lo);
      acc.push_back(product(cx.narrow(1, lo, n), cw.narrow(1, lo, n).contiguous()));
    }
  } else {
    acc.push_back(product(cx, cw));
  }
  return acc;
}

struct QuantizedLinearFn : torch::autograd::Function<QuantizedLinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& codes, const at::Tensor& scales, WeightQuantSpec wspec,
                            ActQuantSpec aspec) {
    RECORD_FUNCTION("bitqat::quantized_linear", std::vector<c10::IValue>());
    const int64_t k = x.size(-1);
    const bool int8 = int8_path(codes);
    const auto dt = int8 ? at::kFloat : codes.scalar_type();
    const auto cx = codes.reshape({-1, k});
    if (int8 && (aspec.type != ActQuant::kPerToken || scales.scalar_type() != at::kFloat ||
                 scales.numel() != cx.size(0))) {
      throw std::invalid_argument(fmt::format(
          "quantized_linear: int8 codes [{}, {}] need per-token float32 scales [{}], got {} scales of {}", cx.size(0),
          k, cx.size(0), scales.numel(), c10::toString(scales.scalar_type())));
    }
    const auto qw = quantize_weight(weight.detach(), wspec);
    const auto cw = int8 ? qw.codes : qw.codes.to(dt);
    const auto gamma = qw.scales.to(dt);
    const auto s = aspec.type == ActQuant::kPerToken ? scales.reshape({-1, 1}) : scales.reshape({1, 1});
    const auto acc = code_products(cx, cw, wspec);
    // An absent bias arrives as an empty placeholder (autograd functions take no undefined inputs).
    const bool has_bias = bias.numel() > 0;
    const auto b = has_bias ? bias.detach() : at::Tensor();
    at::Tensor y;
    if (int8) {
      const bool grouped = wspec.granularity == Granularity::kPerGroup;
      const auto gm = wspec.granularity == Granularity::kPerTensor ? gamma.expand({weight.size(0)}).contiguous() : gamma;
      y = kernels::linear_epilogue(acc, gm, grouped ? gamma.size(1) : 1, scales.reshape({-1}).contiguous(), b);
    } else {
      y = epilogue(acc, gamma, wspec, s, b);
    }

    at::Tensor mask_w, mask_a;
    if (wspec.estimator == Estimator::kClipped) {
      const auto scale = expand_scales(qw.scales, wspec, weight.sizes());
      mask_w = (weight.detach().to(scale.scalar_type()).abs() / scale.clamp_min(wspec.eps)).le(wspec.clip);
    }
    if (aspec.estimator == Estimator::kClipped) {
      const double qmax = static_cast<double>((1 << (aspec.bits - 1)) - 1);
      mask_a = (x.detach().reshape({-1, k}).to(dt).abs() * s / qmax).le(aspec.clip);
    }
    // The backward needs the codes and scales only: int8 activations, not a float copy.
    ctx->save_for_backward({cx, scales, cw, gamma, mask_w, mask_a});
    ctx->saved_data["wspec_gran"] = static_cast<int64_t>(wspec.granularity);
    ctx->saved_data["wspec_group"] = wspec.group_size;
    ctx->saved_data["per_token"] = aspec.type == ActQuant::kPerToken;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["has_bias"] = has_bias;
    auto shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return y.view(shape).to(x.scalar_type());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto v = ctx->get_saved_variables();
    const auto &cx = v[0], &xs = v[1], &cw = v[2], &gamma = v[3], &mask_w = v[4], &mask_a = v[5];
    WeightQuantSpec wspec;
    wspec.granularity = static_cast<Granularity>(ctx->saved_data["wspec_gran"].toInt());
    wspec.group_size = ctx->saved_data["wspec_group"].toInt();
    const bool per_token = ctx->saved_data["per_token"].toBool();
    const bool int8 = int8_path(cx);
    const auto dt = int8 ? at::kFloat : cx.scalar_type();
    const int64_t k = cx.size(1), n = cw.size(0);
    const auto g = grad_out[0].reshape({-1, n}).to(dt);
    at::Tensor w_deq, x_deq;
    if (int8) {
      const bool per_tensor = wspec.granularity == Granularity::kPerTensor;
      const int64_t group = wspec.granularity == Granularity::kPerGroup ? wspec.group_size : k;
      w_deq = kernels::scale_codes(cw, gamma, group, per_tensor);
      x_deq = kernels::dequant_rows(cx, xs.reshape({-1}).contiguous());
    } else {
      w_deq = cw * expand_scales(gamma, wspec, cw.sizes());
      x_deq = per_token ? cx / xs.reshape({-1, 1}) : cx / xs.reshape({1, 1});
    }
    auto grad_x = at::mm(g, w_deq);
    auto grad_w = at::mm(g.t(), x_deq);
    if (mask_a.defined()) grad_x = grad_x * mask_a.to(dt);
    if (mask_w.defined()) grad_w = grad_w * mask_w.to(dt);
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto grad_b = ctx->saved_data["has_bias"].toBool() ? g.sum(0) : at::Tensor();
    auto x_shape = grad_out[0].sizes().vec();
    x_shape.back() = k;
    return {grad_x.view(x_shape).to(x_dtype),
            grad_w.to(w_dtype),
            grad_b,
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

bool quantized_linear_applicable(const at::Tensor& x, const WeightQuantSpec& w, const ActQuantSpec& a) {
  if (w.type == WeightQuant::kNone || a.type == ActQuant::kNone || !x.device().is_cpu()) return false;
  if (w.granularity == Granularity::kPerKernel) return false;
  return x.scalar_type() == at::kDouble || x.size(-1) < kExactFloatK;
}

ActCodes quantize_input_codes(const at::Tensor& x, const ActQuantSpec& spec) {
  const int64_t k = x.size(-1);
  const auto x2 = x.detach().reshape({-1, k}).contiguous();
  if (kernels::fused_cpu(x2) && spec.type == ActQuant::kPerToken) {
    auto r = kernels::quantize_rows(x2, spec.eps, spec.bits);
    return {r.codes, r.scales};
  }
  const auto q = quantize_activation(x2, spec);
  return {q.codes.to(q.scales.scalar_type()), q.scales.reshape({-1})};
}

at::Tensor quantized_linear(const at::Tensor& x, const ActCodes& codes, const at::Tensor& weight,
                            const at::Tensor& bias, const WeightQuantSpec& wspec, const ActQuantSpec& aspec) {
  return QuantizedLinearFn::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()), codes.codes,
                                  codes.scales, wspec, aspec);
}

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const WeightQuantSpec& wspec, const ActQuantSpec& aspec) {
  return quantized_linear(x, quantize_input_codes(x, aspec), weight, bias, wspec, aspec);
}

}  // namespace bitqat::bitlinear
