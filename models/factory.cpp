#include "models/factory.hpp"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <fmt/format.h>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"

namespace bitqat::models {

namespace {
// The kind key; the other keys are the kind's own schema.
const core::Schema<ModelConfig>& kind_schema() {
  static const core::Schema<ModelConfig> s({
      core::key("kind", &ModelConfig::kind,
                "the model: lm (a BitNet-style decoder LM), cnn (a small image classifier), dit (a "
                "class-conditional diffusion transformer trained by flow matching)")
          .choices(kModelKindNames),
  });
  return s;
}
}  // namespace

ModelConfig ModelConfig::from_yaml(const core::Node& model) {
  ModelConfig c;
  c.node = model;
  for (const auto& f : kind_schema().fields()) {
    if (model.has(f.key)) f.read(model, &c);
  }
  switch (c.kind) {
    case ModelKind::kLM:
      c.lm = LMConfig::from_yaml(model);
      break;
    case ModelKind::kCNN:
      c.cnn = CNNConfig::from_yaml(model);
      break;
    case ModelKind::kDiT:
      c.dit = DiTConfig::from_yaml(model);
      break;
  }
  return c;
}

void ModelConfig::write(YAML::Node out) const {
  kind_schema().write(*this, out);
  switch (kind) {
    case ModelKind::kLM:
      LMConfig::schema().write(lm, out);
      break;
    case ModelKind::kCNN:
      CNNConfig::schema().write(cnn, out);
      break;
    case ModelKind::kDiT:
      DiTConfig::schema().write(dit, out);
      break;
  }
}

std::vector<core::KeyReference> ModelConfig::reference() {
  auto rows = kind_schema().reference("model.");
  auto add = [&](const char* kind, std::vector<core::KeyReference> more) {
    for (auto& r : more) {
      r.when = std::string("kind: ") + kind;
      rows.push_back(std::move(r));
    }
  };
  add("lm", LMConfig::schema().reference("model."));
  add("cnn", CNNConfig::schema().reference("model."));
  add("dit", DiTConfig::schema().reference("model."));
  return rows;
}

std::string model_identity(const ModelConfig& model, int64_t data_vocab) {
  if (model.kind == ModelKind::kDiT) {
    const auto& c = model.dit;
    return fmt::format(
        "dit channels={} height={} width={} patch_size={} dim={} n_layers={} n_heads={} mlp_dim={} num_classes={} "
        "pos_embed={} freq_dim={} sub_norm={} quantize_patch_embed={} norm_eps={}",
        c.channels, c.height, c.width, c.patch_size, c.dim, c.n_layers, c.n_heads, c.mlp_dim, c.num_classes,
        core::name_of(kPosEmbedNames, c.pos_embed), c.freq_dim, c.sub_norm, c.quantize_patch_embed, c.norm_eps);
  }
  if (model.kind == ModelKind::kLM) {
    auto c = model.lm;
    if (c.vocab_size == 0) c.vocab_size = data_vocab;
    return fmt::format(
        "lm vocab_size={} dim={} n_layers={} n_heads={} n_kv_heads={} ffn={} ffn_dim={} sub_norm={} rope_theta={} "
        "norm_eps={} tie_embeddings={}",
        c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, to_string(c.ffn), c.ffn_dim, c.sub_norm, c.rope_theta,
        c.norm_eps, c.tie_embeddings);
  }
  const auto& c = model.cnn;
  return fmt::format(
      "cnn channels1={} channels2={} hidden={} num_classes={} batch_norm={} quantize_first={} quantize_last={}",
      c.channels1, c.channels2, c.hidden, c.num_classes, c.batch_norm, c.quantize_first, c.quantize_last);
}

ModelHandle make_model(const ModelConfig& model, const bitlinear::QuantSpec& spec,
                       const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                       int64_t data_vocab) {
  ModelHandle h;
  h.kind = model.kind;
  if (h.kind == ModelKind::kDiT) {
    // The objective (flow matching) needs more than (inputs, targets): training/task.cpp drives it.
    h.module = std::make_shared<BitDiTImpl>(model.dit, spec, include, exclude);
  } else if (h.kind == ModelKind::kLM) {
    auto c = model.lm;
    c.resolve_vocab(data_vocab, model.where("vocab_size"));
    auto lm = std::make_shared<BitLMImpl>(c, spec, include, exclude);
    h.module = lm;
    h.loss = [lm](const at::Tensor& x, const at::Tensor& y) { return lm->loss(x, y); };
    h.forward = [lm](const at::Tensor& x) { return lm->forward(x); };
  } else {
    const auto& c = model.cnn;
    if (data_vocab != c.num_classes) {
      throw core::ConfigError(
          fmt::format("{}: expected the data's {} classes", model.node.describe("num_classes"), data_vocab));
    }
    auto cnn = std::make_shared<BitCNNImpl>(c, spec, include, exclude);
    h.module = cnn;
    h.loss = [cnn](const at::Tensor& x, const at::Tensor& y) { return cnn->loss(x, y); };
    h.forward = [cnn](const at::Tensor& x) { return cnn->forward(x); };
  }
  // The models initialise their weights after the layers were built: learned scales follow them.
  for (auto& [name, layer] : bitlinear::learned_scales(*h.module)) layer->init_scale();
  return h;
}

namespace {
// Meta in the thread's included dispatch keys, and the thread's key sets exactly as they were
// afterwards. (c10's IncludeDispatchKeyGuard cannot be used: its set difference keeps backend bits,
// so the Meta bit would stay included and later CPU factory calls would still make meta tensors.)
class MetaConstruction {
 public:
  MetaConstruction() : saved_(c10::impl::tls_local_dispatch_key_set()) {
    c10::impl::tls_set_dispatch_key_included(c10::DispatchKey::Meta, true);
  }
  ~MetaConstruction() { c10::impl::_force_tls_local_dispatch_key_set(saved_); }
  MetaConstruction(const MetaConstruction&) = delete;
  MetaConstruction& operator=(const MetaConstruction&) = delete;

 private:
  c10::impl::LocalDispatchKeySet saved_;
};
}  // namespace

ModelHandle make_meta_model(const ModelConfig& model, const bitlinear::QuantSpec& spec,
                            const std::vector<std::string>& include, const std::vector<std::string>& exclude,
                            int64_t data_vocab) {
  // The modules allocate on the CPU (at::empty, torch::nn's own constructors) and initialise in place.
  // With Meta among the included dispatch keys every factory call dispatches to the meta kernels (Meta
  // is the highest backend bit), so the tensors are meta tensors and every initialiser a no-op;
  // constructors that read values would fail here, and none does.
  // A DiT's constructor computes its sin-cos position table from values, which meta tensors do not
  // have: a DiT is built on the CPU (the DiTs here have a few million parameters).
  if (model.kind == ModelKind::kDiT) return make_model(model, spec, include, exclude, data_vocab);
  MetaConstruction meta;
  return make_model(model, spec, include, exclude, data_vocab);
}

BlockRunner* block_runner(torch::nn::Module& model) {
  if (auto* lm = dynamic_cast<BitLMImpl*>(&model)) return &lm->block_runner;
  if (auto* dit = dynamic_cast<BitDiTImpl*>(&model)) return &dit->block_runner;
  return nullptr;
}

}  // namespace bitqat::models
