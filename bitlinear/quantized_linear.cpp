#include "bitlinear/quantized_linear.hpp"

#include <torch/autograd.h>

#include "bitlinear/quant_kernels.hpp"

namespace bitqat::bitlinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kExactFloatK = (int64_t{1} << 24) / 128;  // |acc| <= 128 K must stay below 2^24

// The epilogue, in the order of cuda/reference.cpp epilogue_ref: y = 0; y += acc_g * gamma_g for each
// group g in order; y / s; + bias. acc [M, N] (one group) or a list of per-group accumulators.
at::Tensor epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, const WeightQuantSpec& spec,
                    const at::Tensor& s, const at::Tensor& bias) {
  at::Tensor y;
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
    const auto term = acc[g] * scale;
    y = g == 0 ? term : y + term;  // 0 + term == term exactly
  }
  y = y / s;
  if (bias.defined()) y = y + bias.to(y.scalar_type()).reshape({1, -1});
  return y;
}

struct QuantizedLinearFn : torch::autograd::Function<QuantizedLinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            WeightQuantSpec wspec, ActQuantSpec aspec) {
    const int64_t k = x.size(-1);
    const auto qa = quantize_activation(x.detach(), aspec);
    const auto qw = quantize_weight(weight.detach(), wspec);
    const auto dt = qa.scales.scalar_type();
    const auto cx = qa.codes.reshape({-1, k}).to(dt);
    const auto cw = qw.codes.to(dt);
    const auto s = aspec.type == ActQuant::kPerToken ? qa.scales.reshape({-1, 1}) : qa.scales.reshape({1, 1});
    std::vector<at::Tensor> acc;
    if (wspec.granularity == Granularity::kPerGroup) {
      const int64_t g = wspec.group_size;
      for (int64_t lo = 0; lo < k; lo += g) {
        const int64_t n = std::min(g, k - lo);
        acc.push_back(at::mm(cx.narrow(1, lo, n), cw.narrow(1, lo, n).t()));
      }
    } else {
      acc.push_back(at::mm(cx, cw.t()));
    }
    // An absent bias arrives as an empty placeholder (autograd functions take no undefined inputs).
    const bool has_bias = bias.numel() > 0;
    const auto y = epilogue(acc, qw.scales.to(dt), wspec, s, has_bias ? bias.detach() : at::Tensor());

    at::Tensor mask_w, mask_a;
    if (wspec.estimator == Estimator::kClipped) {
      const auto scale = expand_scales(qw.scales, wspec, weight.sizes());
      mask_w = (weight.detach().to(scale.scalar_type()).abs() / scale.clamp_min(wspec.eps)).le(wspec.clip);
    }
    if (aspec.estimator == Estimator::kClipped) {
      const double qmax = static_cast<double>((1 << (aspec.bits - 1)) - 1);
      mask_a = (x.detach().to(qa.scales.scalar_type()).abs() * qa.scales / qmax).le(aspec.clip);
    }
    ctx->save_for_backward({qa.codes, qa.scales, qw.codes, qw.scales, mask_w, mask_a});
    ctx->saved_data["wspec_gran"] = static_cast<int64_t>(wspec.granularity);
    ctx->saved_data["wspec_group"] = wspec.group_size;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["has_bias"] = has_bias;
    auto shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return y.view(shape).to(x.scalar_type());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto v = ctx->get_saved_variables();
    const auto &xc = v[0], &xs = v[1], &wc = v[2], &ws = v[3], &mask_w = v[4], &mask_a = v[5];
    WeightQuantSpec wspec;
    wspec.granularity = static_cast<Granularity>(ctx->saved_data["wspec_gran"].toInt());
    wspec.group_size = ctx->saved_data["wspec_group"].toInt();
    const auto dt = xs.scalar_type();
    const int64_t k = xc.size(-1);
    const auto g = grad_out[0].reshape({-1, wc.size(0)}).to(dt);
    const auto w_deq = wc.to(dt) * expand_scales(ws.to(dt), wspec, wc.sizes());
    const auto x_deq = (xc.to(dt) / xs).reshape({-1, k});
    auto grad_x = at::mm(g, w_deq).view(xc.sizes());
    auto grad_w = at::mm(g.t(), x_deq);
    if (mask_a.defined()) grad_x = grad_x * mask_a.to(dt);
    if (mask_w.defined()) grad_w = grad_w * mask_w.to(dt);
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto grad_b = ctx->saved_data["has_bias"].toBool() ? g.sum(0) : at::Tensor();
    return {grad_x.to(x_dtype), grad_w.to(w_dtype), grad_b, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool quantized_linear_applicable(const at::Tensor& x, const WeightQuantSpec& w, const ActQuantSpec& a) {
  if (w.type == WeightQuant::kNone || a.type == ActQuant::kNone || !x.device().is_cpu()) return false;
  if (w.granularity == Granularity::kPerKernel) return false;
  return x.scalar_type() == at::kDouble || x.size(-1) < kExactFloatK;
}

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const WeightQuantSpec& wspec, const ActQuantSpec& aspec) {
  return QuantizedLinearFn::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()), wspec, aspec);
}

}  // namespace bitqat::bitlinear
