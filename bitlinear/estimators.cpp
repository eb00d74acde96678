#include "bitlinear/estimators.hpp"

#include "bitlinear/quant_spec.hpp"

#include <fmt/format.h>
#include <torch/autograd.h>

#include <cmath>
#include <stdexcept>

#include "bitlinear/quant_kernels.hpp"
#include "cuda/quant_codes.hpp"

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

// The fused passes (bitlinear/quant_kernels.hpp; CPU row kernels or device kernels) serve float32
// 2-D weights of a type with a fused fake quantization (its traits row) under the identity estimator,
// and per-token float32 activations; they compute the same values as the composed definitions.
bool fused_weight(const at::Tensor& w, const WeightQuantSpec& spec) {
  return kernels::fused_fake_quant(w) && w.dim() == 2 && traits(spec.type).fake_quantize != nullptr &&
         spec.estimator == Estimator::kIdentity && spec.granularity != Granularity::kPerKernel;
}

struct FakeQuantWeight : torch::autograd::Function<FakeQuantWeight> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, WeightQuantSpec spec, double lambda) {
    ctx->saved_data["lambda"] = lambda;
    if (fused_weight(w, spec)) {
      ctx->save_for_backward({at::Tensor()});
      const auto g = scale_grouping(spec, w.sizes());
      return traits(spec.type).fake_quantize(w.detach().contiguous(), g.group, g.per_tensor, spec.eps, lambda).first;
    }
    const auto q = quantize_weight(w, spec);
    ctx->save_for_backward({lambda != 0.0 ? clipped_ste_mask(w, q) : at::Tensor()});
    return blend(w.detach(), dequantize_weight(q), lambda);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto mask = ctx->get_saved_variables()[0];
    return {ste_grad(grad_out[0], mask, ctx->saved_data["lambda"].toDouble()), at::Tensor(), at::Tensor()};
  }
};

struct FakeQuantActivation : torch::autograd::Function<FakeQuantActivation> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, ActQuantSpec spec, double lambda) {
    ctx->saved_data["lambda"] = lambda;
    ctx->saved_data["fused"] = false;
    if (kernels::fused_fake_quant(x) && spec.type == ActQuant::kPerToken && x.dim() >= 1 && x.size(-1) > 0) {
      const int64_t k = x.size(-1);
      const auto x2 = x.detach().reshape({-1, k}).contiguous();
      auto [out, s] = kernels::act_fake_quant(x2, spec.eps, spec.bits, lambda);
      const bool clipped = spec.estimator == Estimator::kClipped && lambda != 0.0;
      ctx->saved_data["fused"] = true;
      ctx->saved_data["clip"] = clipped ? spec.clip : -1.0;
      ctx->saved_data["bits"] = static_cast<int64_t>(spec.bits);
      ctx->save_for_backward({clipped ? x2 : at::Tensor(), clipped ? s : at::Tensor()});
      return out.view(x.sizes());
    }
    const auto q = quantize_activation(x, spec);
    ctx->save_for_backward({lambda != 0.0 ? clipped_ste_mask(x, q.scales, spec) : at::Tensor()});
    return blend(x.detach(), dequantize_activation(q), lambda);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const double lambda = ctx->saved_data["lambda"].toDouble();
    if (ctx->saved_data["fused"].toBool()) {
      const double clip = ctx->saved_data["clip"].toDouble();
      if (clip < 0.0) return {grad_out[0], at::Tensor(), at::Tensor()};
      const auto& x2 = saved[0];
      const auto g = grad_out[0].reshape({-1, x2.size(1)}).to(at::kFloat).contiguous();
      const auto dx =
          kernels::act_ste_backward(g, x2, saved[1], static_cast<int>(ctx->saved_data["bits"].toInt()), clip, lambda);
      return {dx.view(grad_out[0].sizes()).to(grad_out[0].scalar_type()), at::Tensor(), at::Tensor()};
    }
    return {ste_grad(grad_out[0], saved[0], lambda), at::Tensor(), at::Tensor()};
  }
};

struct FakeQuantWeightLearned : torch::autograd::Function<FakeQuantWeightLearned> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& scale, WeightQuantSpec spec,
                            double lambda) {
    const auto q = quantize_weight_learned(w, scale, spec);
    const auto s = q.scales.reshape({-1, 1});
    const auto codes = q.codes.to(s.scalar_type());
    const auto v = w.detach().to(s.scalar_type()) / s;
    // d(q s)/ds per weight: LSQ's q - v inside the clamp, q beyond it; binary codes: q.
    const auto dq_ds = spec.type == WeightQuant::kTernary ? at::where(v.abs() <= 1.0, codes - v, codes) : codes;
    const auto mask = spec.estimator == Estimator::kClipped && lambda != 0.0 ? v.abs().le(spec.clip) : at::Tensor();
    ctx->saved_data["lambda"] = lambda;
    ctx->saved_data["g_s"] = 1.0 / std::sqrt(static_cast<double>(w.size(1)));  // Q_p = 1
    ctx->save_for_backward({dq_ds, mask});
    return blend(w.detach(), codes * s, lambda);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const double lambda = ctx->saved_data["lambda"].toDouble();
    const auto& g = grad_out[0];
    const auto grad_w = ste_grad(g, saved[1], lambda);
    const auto sum = (g.to(saved[0].scalar_type()) * saved[0]).sum(1);
    const auto grad_s = sum * (lambda * ctx->saved_data["g_s"].toDouble());
    return {grad_w, grad_s, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor clipped_ste_mask(const at::Tensor& w, const QuantizedWeight& q) {
  if (q.spec.estimator != Estimator::kClipped) return at::Tensor();
  const auto scale = expand_scales(q.scales, q.spec, w.sizes());
  return (w.detach().to(scale.scalar_type()).abs() / scale.clamp_min(q.spec.eps)).le(q.spec.clip);
}

at::Tensor clipped_ste_mask(const at::Tensor& x, const at::Tensor& scales, const ActQuantSpec& spec) {
  if (spec.estimator != Estimator::kClipped) return at::Tensor();
  const double qmax = static_cast<double>(cuda::act_qmax(spec.bits));
  return (x.detach().to(scales.scalar_type()).abs() * scales / qmax).le(spec.clip);
}

at::Tensor fake_quantize_weight(const at::Tensor& w, const WeightQuantSpec& spec, double lambda) {
  check_lambda(lambda, "fake_quantize_weight: lambda");
  if (spec.type == WeightQuant::kNone) return w;
  return FakeQuantWeight::apply(w, spec, lambda);
}

at::Tensor fake_quantize_weight_learned(const at::Tensor& w, const at::Tensor& scale, const WeightQuantSpec& spec,
                                        double lambda) {
  check_lambda(lambda, "fake_quantize_weight_learned: lambda");
  if (scale.scalar_type() != w.scalar_type()) {
    throw std::invalid_argument(fmt::format("fake_quantize_weight_learned: scale is {}, the weight {}",
                                            c10::toString(scale.scalar_type()), c10::toString(w.scalar_type())));
  }
  return FakeQuantWeightLearned::apply(w, scale, spec, lambda);
}

at::Tensor fake_quantize_activation(const at::Tensor& x, const ActQuantSpec& spec, double lambda) {
  check_lambda(lambda, "fake_quantize_activation: lambda");
  if (spec.type == ActQuant::kNone) return x;
  return FakeQuantActivation::apply(x, spec, lambda);
}

}  // namespace bitqat::bitlinear
