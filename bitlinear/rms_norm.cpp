#include "bitlinear/rms_norm.hpp"

namespace bitqat::bitlinear {

RMSNormImpl::RMSNormImpl(int64_t dim_, double eps_) : dim(dim_), eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // Normalise in float32 even for bf16 inputs, then return the input's dtype.
  const auto xf = x.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const auto y = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (y * weight.to(y.scalar_type())).to(x.scalar_type());
}

}  // namespace bitqat::bitlinear
