// Another implementation of a BitLinear's forward pass. BitLinear calls an installed kernel for the
// inputs it applies to and knows nothing else about it; the op layer (bitlinear/ops) provides them:
// the W1.58A8 int8 kernels for CUDA training, and the packed layer for inference.
#pragma once
#include <ATen/ATen.h>

namespace bitqat::bitlinear {

struct BitLinearImpl;

struct LinearKernel {
  virtual ~LinearKernel() = default;
  // Whether forward() computes layer(x) for this input (BitLinear runs its own forward otherwise).
  virtual bool applies(const BitLinearImpl& layer, const at::Tensor& x) const = 0;
  // layer(x): [..., in] -> [..., out] in x's dtype.
  virtual at::Tensor forward(BitLinearImpl& layer, const at::Tensor& x) = 0;
};

}  // namespace bitqat::bitlinear
