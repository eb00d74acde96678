// Small CNN for 1x28x28 images (Fashion-MNIST): conv1 -> [BN] -> ReLU -> pool -> conv2 -> [BN] ->
// ReLU -> pool -> fc1 -> ReLU -> fc2. Convolutions are BitConv2d and linears BitLinear; the first and
// last layers stay full precision unless quantize_first / quantize_last.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/pimpl.h>
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"

namespace bitqat::models {

struct CNNConfig {
  int64_t channels1 = 32;
  int64_t channels2 = 64;
  int64_t hidden = 128;
  int64_t num_classes = 10;
  bool batch_norm = true;
  bool quantize_first = false;
  bool quantize_last = false;

  // The model: section of kind cnn, declared once.
  static const core::Schema<CNNConfig>& schema();
  static CNNConfig from_yaml(const core::Node& model);
};

struct BitCNNImpl : torch::nn::Module {
  // A per_kernel weight granularity applies to the convolutions; the linears then use per_channel.
  BitCNNImpl(CNNConfig config, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
             const std::vector<std::string>& exclude);
  at::Tensor forward(const at::Tensor& images);  // [B, 1, 28, 28] -> logits [B, classes] (float32)
  // The penultimate layer, ReLU(fc1(...)): [B, 1, 28, 28] -> [B, hidden] (float32); forward is
  // fc2(features). The image-quality metric's feature space (training/image_quality.hpp).
  at::Tensor features(const at::Tensor& images);
  at::Tensor loss(const at::Tensor& images, const at::Tensor& labels);

  CNNConfig config;
  bitlinear::BitConv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  bitlinear::BitLinear fc1{nullptr}, fc2{nullptr};

 private:
  at::Tensor hidden(const at::Tensor& images);  // ReLU(fc1(...)) in the compute dtype
};
TORCH_MODULE(BitCNN);

}  // namespace bitqat::models
