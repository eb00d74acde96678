#include "bitlinear/estimators.hpp"

#include "bitlinear/quant_spec.hpp"

#include <fmt/format.h>
#include <torch/autograd.h>

#include <stdexcept>

namespace bitqat::bitlinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// out = x + lambda * (q - x), exact at the ends: lambda 0 gives x, lambda 1 gives q.
at::Tensor blend(const at::Tensor& x, const at::Tensor& q, double lambda) {
  if (lambda == 0.0) return x.clone();
  if (lambda == 1.0) return q.to(x.scalar_type());
  return (x.to(q.scalar_type()) + lambda * (q - x.to(q.scalar_type()))).to(x.scalar_type());
}

// Gradient factor of the blended STE: (1 - lambda) + lambda * mask, or 1 without clipping.
at::Tensor ste_grad(const at::Tensor& g, const at::Tensor& mask, double lambda) {
  if (!mask.defined()) return g;
  const auto factor = (1.0 - lambda) + lambda * mask.to(g.scalar_type());
  return g * factor;
}

struct FakeQuantWeight : torch::autograd::Function<FakeQuantWeight> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, WeightQuantSpec spec, double lambda) {
    const auto q = quantize_weight(w, spec);
    at::Tensor mask;
    if (spec.estimator == Estimator::kClipped && lambda != 0.0) {
      const auto scale = expand_scales(q.scales, spec, w.sizes());
      mask = (w.detach().to(scale.scalar_type()).abs() / scale.clamp_min(spec.eps)).le(spec.clip);
    }
    ctx->saved_data["lambda"] = lambda;
    ctx->save_for_backward({mask});
    return blend(w.detach(), dequantize_weight(q), lambda);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto mask = ctx->get_saved_variables()[0];
    return {ste_grad(grad_out[0], mask, ctx->saved_data["lambda"].toDouble()), at::Tensor(), at::Tensor()};
  }
};

struct FakeQuantActivation : torch::autograd::Function<FakeQuantActivation> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, ActQuantSpec spec, double lambda) {
    const auto q = quantize_activation(x, spec);
    at::Tensor mask;
    if (spec.estimator == Estimator::kClipped && lambda != 0.0) {
      const double qmax = static_cast<double>((1 << (spec.bits - 1)) - 1);
      mask = (x.detach().to(q.scales.scalar_type()).abs() * q.scales / qmax).le(spec.clip);
    }
    ctx->saved_data["lambda"] = lambda;
    ctx->save_for_backward({mask});
    return blend(x.detach(), dequantize_activation(q), lambda);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto mask = ctx->get_saved_variables()[0];
    return {ste_grad(grad_out[0], mask, ctx->saved_data["lambda"].toDouble()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor fake_quantize_weight(const at::Tensor& w, const WeightQuantSpec& spec, double lambda) {
  check_lambda(lambda, "fake_quantize_weight: lambda");
  if (spec.type == WeightQuant::kNone) return w;
  return FakeQuantWeight::apply(w, spec, lambda);
}

at::Tensor fake_quantize_activation(const at::Tensor& x, const ActQuantSpec& spec, double lambda) {
  check_lambda(lambda, "fake_quantize_activation: lambda");
  if (spec.type == ActQuant::kNone) return x;
  return FakeQuantActivation::apply(x, spec, lambda);
}

}  // namespace bitqat::bitlinear
