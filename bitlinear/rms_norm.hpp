// RMSNorm module (no bias): y = x / sqrt(mean(x^2) + eps) * weight. Used as SubLN before
// activation quantization and as the model's norms.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace bitqat::bitlinear {

struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t dim, double eps = 1e-6);
  at::Tensor forward(const at::Tensor& x);
  int64_t dim;
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(RMSNorm);

}  // namespace bitqat::bitlinear
