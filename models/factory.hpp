// Building a model from the `model:` config section: kind lm (BitLM), cnn (BitCNN) or dit (BitDiT),
// with the quantization policy, behind one handle the trainer uses.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "core/config.hpp"

namespace bitqat::models {

struct ModelHandle {
  std::string kind;  // "lm", "cnn" or "dit"
  std::shared_ptr<torch::nn::Module> module;
  // lm and cnn only (a dit's flow-matching objective takes noise and times too: training/task.cpp).
  std::function<at::Tensor(const at::Tensor& inputs, const at::Tensor& targets)> loss;
  std::function<at::Tensor(const at::Tensor& inputs)> forward;  // logits
};

// Validates the section (kind and every key) without building anything.
void validate_model_config(const core::Node& model);

// The settings of the section that change the model's tensors or the function it computes, as one
// canonical text (every such setting spelled out, defaults included, in a fixed order; max_seq_len,
// init_std and other settings that leave checkpoints interchangeable are left out). Two sections
// with the same identity hold interchangeable checkpoints. `data_vocab` resolves vocab_size 0.
std::string model_identity(const core::Node& model, int64_t data_vocab);

// `data_vocab` fills the LM vocabulary when the config leaves it out; a config value must cover it.
// (A dit's shape and classes are checked against the data by training::Config.)
ModelHandle make_model(const core::Node& model, const bitlinear::QuantSpec& spec,
                       const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                       int64_t data_vocab);

}  // namespace bitqat::models
