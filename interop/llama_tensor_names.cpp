#include "interop/llama_tensor_names.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace bitqat::interop {
namespace {

using D = LlamaDim;
using P = LlamaPresence;
using R = TensorRole;

std::string fill(const char* name, int64_t block) {
  std::string s(name);
  const auto at = s.find("{bid}");
  if (at != std::string::npos) s.replace(at, 5, std::to_string(block));
  return s;
}

int64_t size_of(LlamaDim d, const models::LMConfig& c) {
  switch (d) {
    case D::kVocab:
      return c.vocab_size;
    case D::kDim:
      return c.dim;
    case D::kQDim:
      return c.n_heads * c.head_dim();
    case D::kKvDim:
      return c.n_kv_heads * c.head_dim();
    case D::kFfn:
      return c.ffn_dim;
    case D::kNone:
      break;
  }
  throw std::logic_error("llama_tensors: a shape without a first dimension");
}

bool present(LlamaPresence p, const models::LMConfig& c) {
  switch (p) {
    case P::kAlways:
      return true;
    case P::kSubNorm:
      return c.sub_norm;
    case P::kGated:
      return c.gated();
    case P::kUntied:
      return !c.tie_embeddings;
  }
  return false;
}

LlamaTensorEntry entry(const LlamaTensorName& r, int64_t block, const models::LMConfig& c) {
  LlamaTensorEntry e{&r, block, fill(r.bitqat, block), fill(r.hf, block), fill(r.gguf, block), {}, 0};
  e.shape.push_back(size_of(r.rows, c));
  if (r.cols != D::kNone) e.shape.push_back(size_of(r.cols, c));
  e.rope_heads = r.rope == RopeRows::kHeads ? c.n_heads : r.rope == RopeRows::kKvHeads ? c.n_kv_heads : 0;
  return e;
}

bool in_block(const LlamaTensorName& r) { return std::string(r.bitqat).find("{bid}") != std::string::npos; }

// The module at a dotted path below `root`.
const torch::nn::Module& module_at(const torch::nn::Module& root, const std::string& path) {
  const torch::nn::Module* m = &root;
  size_t begin = 0;
  while (begin <= path.size()) {
    const auto end = std::min(path.find('.', begin), path.size());
    const auto children = m->named_children();
    const auto* child = children.find(path.substr(begin, end - begin));
    if (!child) throw std::logic_error(fmt::format("llama tensor names: the model has no module {}", path));
    m = child->get();
    begin = end + 1;
  }
  return *m;
}

}  // namespace

const std::vector<LlamaTensorName>& llama_tensor_names() {
  static const std::vector<LlamaTensorName> table = {
      {LlamaTensor::kTokenEmbd, R::kEmbedding, "embed", "model.embed_tokens", "token_embd", D::kVocab, D::kDim,
       P::kAlways, RopeRows::kNone},
      {LlamaTensor::kAttnNorm, R::kNorm, "layers.{bid}.attn_norm", "model.layers.{bid}.input_layernorm",
       "blk.{bid}.attn_norm", D::kDim, D::kNone, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kAttnQ, R::kLinear, "layers.{bid}.attn.q", "model.layers.{bid}.self_attn.q_proj",
       "blk.{bid}.attn_q", D::kQDim, D::kDim, P::kAlways, RopeRows::kHeads},
      {LlamaTensor::kAttnK, R::kLinear, "layers.{bid}.attn.k", "model.layers.{bid}.self_attn.k_proj",
       "blk.{bid}.attn_k", D::kKvDim, D::kDim, P::kAlways, RopeRows::kKvHeads},
      {LlamaTensor::kAttnV, R::kLinear, "layers.{bid}.attn.v", "model.layers.{bid}.self_attn.v_proj",
       "blk.{bid}.attn_v", D::kKvDim, D::kDim, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kAttnOut, R::kLinear, "layers.{bid}.attn.o", "model.layers.{bid}.self_attn.o_proj",
       "blk.{bid}.attn_output", D::kDim, D::kQDim, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kAttnSubNorm, R::kNorm, "layers.{bid}.attn.o.norm", "model.layers.{bid}.self_attn.attn_sub_norm",
       "blk.{bid}.attn_sub_norm", D::kQDim, D::kNone, P::kSubNorm, RopeRows::kNone},
      {LlamaTensor::kFfnNorm, R::kNorm, "layers.{bid}.ffn_norm", "model.layers.{bid}.post_attention_layernorm",
       "blk.{bid}.ffn_norm", D::kDim, D::kNone, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kFfnGate, R::kLinear, "layers.{bid}.ffn.gate", "model.layers.{bid}.mlp.gate_proj",
       "blk.{bid}.ffn_gate", D::kFfn, D::kDim, P::kGated, RopeRows::kNone},
      {LlamaTensor::kFfnUp, R::kLinear, "layers.{bid}.ffn.up", "model.layers.{bid}.mlp.up_proj", "blk.{bid}.ffn_up",
       D::kFfn, D::kDim, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kFfnDown, R::kLinear, "layers.{bid}.ffn.down", "model.layers.{bid}.mlp.down_proj",
       "blk.{bid}.ffn_down", D::kDim, D::kFfn, P::kAlways, RopeRows::kNone},
      {LlamaTensor::kFfnSubNorm, R::kNorm, "layers.{bid}.ffn.down.norm", "model.layers.{bid}.mlp.ffn_sub_norm",
       "blk.{bid}.ffn_sub_norm", D::kFfn, D::kNone, P::kSubNorm, RopeRows::kNone},
      {LlamaTensor::kOutputNorm, R::kNorm, "norm", "model.norm", "output_norm", D::kDim, D::kNone, P::kAlways,
       RopeRows::kNone},
      {LlamaTensor::kOutput, R::kHead, "lm_head", "lm_head", "output", D::kVocab, D::kDim, P::kUntied, RopeRows::kNone},
  };
  return table;
}

const LlamaTensorName& llama_tensor_name(LlamaTensor t) {
  for (const auto& r : llama_tensor_names()) {
    if (r.tensor == t) return r;
  }
  throw std::logic_error("llama_tensor_name: a tensor without a row");
}

std::vector<LlamaTensorEntry> llama_tensors(const models::LMConfig& c) {
  const auto& table = llama_tensor_names();
  // The table keeps model order: the rows before the block rows, the block rows once per block, the
  // rows after them.
  const auto first = std::find_if(table.begin(), table.end(), in_block);
  const auto last = std::find_if_not(first, table.end(), in_block);
  std::vector<LlamaTensorEntry> out;
  auto add = [&](std::vector<LlamaTensorName>::const_iterator from, std::vector<LlamaTensorName>::const_iterator to,
                 int64_t block) {
    for (auto it = from; it != to; ++it) {
      if (present(it->presence, c)) out.push_back(entry(*it, block, c));
    }
  };
  add(table.begin(), first, -1);
  for (int64_t b = 0; b < c.n_layers; ++b) add(first, last, b);
  add(last, table.end(), -1);
  return out;
}

at::Tensor llama_weight(const models::BitLMImpl& lm, const LlamaTensorEntry& e) {
  const auto params = module_at(lm, e.bitqat).named_parameters(/*recurse=*/false);
  const auto* w = params.find("weight");
  if (!w) throw std::logic_error(fmt::format("llama tensor names: the model's {} has no weight", e.bitqat));
  return *w;
}

const bitlinear::BitLinearImpl& llama_linear(const models::BitLMImpl& lm, const LlamaTensorEntry& e) {
  const auto* l = dynamic_cast<const bitlinear::BitLinearImpl*>(&module_at(lm, e.bitqat));
  if (!l) throw std::logic_error(fmt::format("llama tensor names: the model's {} is not a BitLinear", e.bitqat));
  return *l;
}

}  // namespace bitqat::interop
