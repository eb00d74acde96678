// The `model:` config section, parsed once into the config of its kind (lm: BitLM, cnn: BitCNN, dit:
// BitDiT), and building the model from it, with the quantization policy, behind one handle the
// trainer uses.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"
#include "models/cnn.hpp"
#include "models/dit.hpp"
#include "models/lm.hpp"
#include "models/recompute.hpp"

namespace bitqat::models {

enum class ModelKind { kLM, kCNN, kDiT };
inline constexpr std::array<core::EnumName<ModelKind>, 3> kModelKindNames = {
    {{ModelKind::kLM, "lm"}, {ModelKind::kCNN, "cnn"}, {ModelKind::kDiT, "dit"}}};
inline const char* to_string(ModelKind k) { return core::name_of(kModelKindNames, k); }

// The model: section. `kind` picks which of lm, cnn and dit holds the settings (the others keep
// their defaults); every key is validated by that kind's schema.
struct ModelConfig {
  ModelKind kind = ModelKind::kLM;
  LMConfig lm;
  CNNConfig cnn;
  DiTConfig dit;
  core::Node node;  // the section, for error locations

  // Throws ConfigError (file:line, key, value, expected) for a bad kind, an unknown key or value.
  static ModelConfig from_yaml(const core::Node& model);
  // Every key of the kind, defaults filled in, into the mapping `out`.
  void write(YAML::Node out) const;
  // "configs/x.yaml:3: model.<key>" for error messages.
  std::string where(const std::string& key) const { return node.where(key); }
  // The reference rows of every kind's keys ("model.dim", meaning prefixed "lm: ").
  static std::vector<core::KeyReference> reference();
};

struct ModelHandle {
  ModelKind kind = ModelKind::kLM;
  std::shared_ptr<torch::nn::Module> module;
  // lm and cnn only (a dit's flow-matching objective takes noise and times too: training/task.cpp).
  std::function<at::Tensor(const at::Tensor& inputs, const at::Tensor& targets)> loss;
  std::function<at::Tensor(const at::Tensor& inputs)> forward;  // logits
};

// The settings of the section that change the model's tensors or the function it computes, as one
// canonical text (every such setting spelled out, defaults included, in a fixed order; max_seq_len,
// init_std and other settings that leave checkpoints interchangeable are left out). Two sections
// with the same identity hold interchangeable checkpoints. `data_vocab` resolves vocab_size 0.
std::string model_identity(const ModelConfig& model, int64_t data_vocab);

// `data_vocab` fills the LM vocabulary when the config leaves it out; a config value must cover it.
// A cnn's classes must be the data's. (A dit's shape and classes are checked against the data by
// training::Config.)
ModelHandle make_model(const ModelConfig& model, const bitlinear::QuantSpec& spec,
                       const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                       int64_t data_vocab);

// The same model with every tensor on the meta device: names, shapes, dtypes and requires_grad as
// make_model's, no memory and no initialisation (what `bitqat plan` counts; an 8B model builds in
// well under a second). Its forward cannot compute values. A dit is the exception: its constructor
// computes a table, so it is built on the CPU as make_model builds it.
ModelHandle make_meta_model(const ModelConfig& model, const bitlinear::QuantSpec& spec,
                            const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                            int64_t data_vocab);

// The runner of a transformer's blocks (BitLM, BitDiT; models/recompute.hpp), where activation
// checkpointing and block hooks are set; nullptr for a model without transformer blocks (BitCNN).
BlockRunner* block_runner(torch::nn::Module& model);

}  // namespace bitqat::models
