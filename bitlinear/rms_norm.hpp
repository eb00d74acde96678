// RMSNorm module (no bias): y = (x * r) * weight, r = 1 / sqrt(mean(x^2) + eps) (Zhang & Sennrich
// 2019). Used as SubLN before activation quantization and as the model's norms. The forward runs the
// canonical kernel of cuda/quant_codes.hpp (bitlinear/quant_kernels.hpp), so its output, and the
// activation codes computed from it, do not depend on the CPU's instruction set; the backward is the
// analytic gradient.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace bitqat::bitlinear {

// Autograd-aware RMSNorm over the last dimension of x [..., K] with weight w [K]. The result is in
// the compute dtype (float64 for double x, float32 otherwise), before any cast back to x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t dim, double eps = 1e-6);
  at::Tensor forward(const at::Tensor& x);  // in x's dtype
  // In float32 (float64 for double x): what the activation quantizer after a SubLN consumes, so a bf16
  // input is not rounded to bf16 between the norm and the codes (PackedBitLinear's fused norm does the
  // same).
  at::Tensor forward_float(const at::Tensor& x);
  int64_t dim;
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(RMSNorm);

}  // namespace bitqat::bitlinear
