#include "models/factory.hpp"

#include <fmt/format.h>

#include <set>

#include "core/error.hpp"
#include "models/cnn.hpp"
#include "models/dit.hpp"
#include "models/lm.hpp"

namespace bitqat::models {

namespace {
const std::set<std::string> kKinds = {"lm", "cnn", "dit"};
}  // namespace

void validate_model_config(const core::Node& model) {
  const auto kind = model.get_choice("kind", "lm", kKinds);
  if (kind == "lm") {
    LMConfig::from_yaml(model);
  } else if (kind == "cnn") {
    CNNConfig::from_yaml(model);
  } else {
    DiTConfig::from_yaml(model);
  }
}

std::string model_identity(const core::Node& model, int64_t data_vocab) {
  const auto kind = model.get_choice("kind", "lm", kKinds);
  if (kind == "dit") {
    const auto c = DiTConfig::from_yaml(model);
    return fmt::format(
        "dit channels={} height={} width={} patch_size={} dim={} n_layers={} n_heads={} mlp_dim={} num_classes={} "
        "pos_embed={} freq_dim={} sub_norm={} quantize_patch_embed={} norm_eps={}",
        c.channels, c.height, c.width, c.patch_size, c.dim, c.n_layers, c.n_heads, c.mlp_dim, c.num_classes,
        c.pos_embed, c.freq_dim, c.sub_norm, c.quantize_patch_embed, c.norm_eps);
  }
  if (kind == "lm") {
    auto c = LMConfig::from_yaml(model);
    if (c.vocab_size == 0) c.vocab_size = data_vocab;
    return fmt::format(
        "lm vocab_size={} dim={} n_layers={} n_heads={} n_kv_heads={} ffn={} ffn_dim={} sub_norm={} rope_theta={} "
        "norm_eps={} tie_embeddings={}",
        c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn, c.ffn_dim, c.sub_norm, c.rope_theta,
        c.norm_eps, c.tie_embeddings);
  }
  const auto c = CNNConfig::from_yaml(model);
  return fmt::format(
      "cnn channels1={} channels2={} hidden={} num_classes={} batch_norm={} quantize_first={} quantize_last={}",
      c.channels1, c.channels2, c.hidden, c.num_classes, c.batch_norm, c.quantize_first, c.quantize_last);
}

ModelHandle make_model(const core::Node& model, const bitlinear::QuantSpec& spec,
                       const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                       int64_t data_vocab) {
  ModelHandle h;
  h.kind = model.get_choice("kind", "lm", kKinds);
  if (h.kind == "dit") {
    // The objective (flow matching) needs more than (inputs, targets): training/task.cpp drives it.
    h.module = std::make_shared<BitDiTImpl>(DiTConfig::from_yaml(model), spec, include, exclude);
    return h;
  }
  if (h.kind == "lm") {
    auto c = LMConfig::from_yaml(model);
    c.resolve_vocab(data_vocab, model.where("vocab_size"));
    auto lm = std::make_shared<BitLMImpl>(c, spec, include, exclude);
    h.module = lm;
    h.loss = [lm](const at::Tensor& x, const at::Tensor& y) { return lm->loss(x, y); };
    h.forward = [lm](const at::Tensor& x) { return lm->forward(x); };
  } else {
    auto c = CNNConfig::from_yaml(model);
    if (data_vocab != c.num_classes) {
      throw core::ConfigError(
          fmt::format("{}: expected the data's {} classes", model.describe("num_classes"), data_vocab));
    }
    auto cnn = std::make_shared<BitCNNImpl>(c, spec, include, exclude);
    h.module = cnn;
    h.loss = [cnn](const at::Tensor& x, const at::Tensor& y) { return cnn->loss(x, y); };
    h.forward = [cnn](const at::Tensor& x) { return cnn->forward(x); };
  }
  return h;
}

}  // namespace bitqat::models
