// BitLinear on the W1.58A8 kernels, installed into BitLinear layers as kernels
// (bitlinear/linear_kernel.hpp). Training: a fully quantized BitLinear (lambdas 1, ternary, identity
// STE, 8-bit per-token activations) on a CUDA tensor runs its forward on the int8 kernels with weights
// quantized and packed once per optimizer step (cached on the weight's version counter), and its
// backward as the straight-through estimator with bf16 matmuls. Inference: PackedBitLinear holds only
// packed weights and scales and replaces the layer's latent weights.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/ops/w158a8_ops.hpp"

namespace bitqat::bitlinear::ops {

// Installs the CUDA training kernel into every BitLinear of the tree (it applies only to CUDA inputs
// of fully quantized ternary layers; other calls take BitLinear's own path). Returns how many.
int install_training_kernels(torch::nn::Module& root);

// Whether the training kernel computes layer(x).
bool cuda_fast_path_applicable(const BitLinearImpl& layer, const at::Tensor& x);

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
  at::Tensor expanded;  // int8 codes for a kernel that reads bytes, made on first use; not a buffer
};
TORCH_MODULE(PackedBitLinear);

// Switches one layer to inference on 2-bit packed weights: a PackedBitLinear registered as child
// `packed` replaces its latent weight, bias and SubLN (the packed layer keeps the norm weight), so
// its tensors become packed.{packed, scales, norm_weight, bias}. Needs ternary or binary weights (binary
// codes {-1, +1} use the ternary layout; per tensor, per channel or per group of a multiple of 64) and
// 8-bit per-token activations; throws
// std::invalid_argument naming what does not fit. Irreversible.
void pack_layer(BitLinearImpl& layer);

// pack_layer on every BitLinear with quantized weights in the tree (full-precision ones stay).
// Returns the dotted names packed (also logged); errors name the layer.
std::vector<std::string> pack_for_inference(torch::nn::Module& root);

// The PackedBitLinear that replaced a layer's weights, or nullptr.
const PackedBitLinearImpl* packed_of(const BitLinearImpl& layer);

// The packed weights the training kernel of `layer` holds now (undefined when none; tests).
const at::Tensor& training_kernel_cache(const BitLinearImpl& layer);

}  // namespace bitqat::bitlinear::ops
