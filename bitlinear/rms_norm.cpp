#include "bitlinear/rms_norm.hpp"

#include <torch/autograd.h>

#include "bitlinear/quant_kernels.hpp"

namespace bitqat::bitlinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

struct RMSNormFunction : torch::autograd::Function<RMSNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps) {
    const int64_t k = x.size(-1);
    const auto x2 = x.detach().reshape({-1, k}).contiguous();
    auto [y, r] = kernels::rms_norm(x2, w.detach(), eps);
    ctx->save_for_backward({x, w, r});
    auto shape = x.sizes().vec();
    return y.view(shape);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto& r = saved[2];
    const int64_t k = x.size(-1);
    if (kernels::fused_cpu(x) && kernels::fused_cpu(grad_out[0]) && kernels::fused_cpu(w)) {
      auto [dx, dw] = kernels::rms_norm_backward(grad_out[0].reshape({-1, k}), x.reshape({-1, k}).contiguous(), w, r);
      return {dx.view(x.sizes()), dw, at::Tensor()};
    }
    const auto dt = r.scalar_type();
    const auto x2 = x.reshape({-1, k}).to(dt);
    const auto g = grad_out[0].reshape({-1, k}).to(dt);
    const auto rr = r.unsqueeze(1);
    const auto xhat = x2 * rr;
    // y = xhat * w, xhat = x * r, r = (mean(x^2) + eps)^-1/2:
    // dx = r * (g w - xhat * mean(g w xhat)); dw = sum over rows of g xhat.
    const auto gw = g * w.to(dt);
    const auto dx = rr * (gw - xhat * (gw * xhat).mean(-1, /*keepdim=*/true));
    const auto dw = (g * xhat).sum(0);
    return {dx.view(x.sizes()).to(x.scalar_type()), dw.to(w.scalar_type()), at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) { return RMSNormFunction::apply(x, w, eps); }

RMSNormImpl::RMSNormImpl(int64_t dim_, double eps_) : dim(dim_), eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward_float(const at::Tensor& x) { return rms_norm(x, weight, eps); }

at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return forward_float(x).to(x.scalar_type()); }

}  // namespace bitqat::bitlinear
