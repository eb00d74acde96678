// BitLinear on the W1.58A8 kernels. Training: a fully quantized BitLinear (lambdas 1, ternary,
// identity STE, 8-bit per-token activations) on a CUDA tensor runs its forward on the int8 kernels
// with weights quantized and packed once per optimizer step (cached on the weight's version
// counter), and its backward as the straight-through estimator with bf16 matmuls. Inference:
// PackedBitLinear holds only packed weights and scales.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/ops/w158a8_ops.hpp"

namespace bitqat::bitlinear::ops {

// Process-wide switch of the fast path (on by default); benchmarks turn it off to time the
// fake-quant bf16 path of the same model.
void set_cuda_fast_path_enabled(bool enabled);

// Whether layer(x) can run on the W1.58A8 kernels.
bool cuda_fast_path_applicable(const BitLinearImpl& layer, const at::Tensor& x);
// layer(x) on the kernels (autograd-aware); x [..., in] on CUDA.
at::Tensor bit_linear_cuda_forward(BitLinearImpl& layer, const at::Tensor& x);

struct PackedBitLinearImpl : torch::nn::Module {
  // Packs a BitLinear's current quantized weights; the latent weights are not kept.
  explicit PackedBitLinearImpl(const BitLinearImpl& layer);
  at::Tensor forward(const at::Tensor& x);  // float32 or bf16 [..., in] -> [..., out] (float32)
  int64_t weight_bytes() const;             // packed words + scales

  int64_t in_features, out_features;
  cuda::ScaleKind kind;
  int64_t group;
  double norm_eps;
  ActQuantSpec act;
  at::Tensor packed, scales, bias, norm_weight;  // registered buffers (bias / norm_weight optional)
};
TORCH_MODULE(PackedBitLinear);

}  // namespace bitqat::bitlinear::ops
