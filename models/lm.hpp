// BitNet b1.58-style decoder LM: token embedding, blocks of [RMSNorm, rotary attention (multi-head
// or grouped-query), RMSNorm, FFN], final RMSNorm and a full-precision LM head. Every linear inside
// the blocks is a BitLinear; SubLN norms sit before the attention output and FFN down projections.
//
// Module names (the contract for checkpoints, import and export):
//   embed, layers.{i}.attn_norm, layers.{i}.attn.{q,k,v,o}, layers.{i}.attn.o.norm (SubLN),
//   layers.{i}.ffn_norm, layers.{i}.ffn.{gate,up,down}, layers.{i}.ffn.down.norm (SubLN), norm, lm_head
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <yaml-cpp/yaml.h>

#include <map>
#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"
#include "models/recompute.hpp"

namespace bitqat::models {

// The feed-forward network: relu2: down(relu(up x)^2); relu2_glu: down(relu(gate x)^2 * up x)
// (BitNet b1.58 2B4T); swiglu: down(silu(gate x) * up x) (Llama).
enum class Ffn { kRelu2, kRelu2Glu, kSwiglu };
inline constexpr std::array<core::EnumName<Ffn>, 3> kFfnNames = {
    {{Ffn::kRelu2, "relu2"}, {Ffn::kRelu2Glu, "relu2_glu"}, {Ffn::kSwiglu, "swiglu"}}};
inline const char* to_string(Ffn f) { return core::name_of(kFfnNames, f); }

struct LMConfig {
  int64_t vocab_size = 0;  // 0: from the data
  int64_t dim = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0: n_heads (multi-head); fewer: grouped-query attention
  int64_t ffn_dim = 0;     // 0: 4 * dim (relu2) or 8/3 * dim rounded to 64 (gated kinds)
  Ffn ffn = Ffn::kRelu2;
  bool sub_norm = true;  // SubLN before attn.o and ffn.down
  int64_t max_seq_len = 256;
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  bool tie_embeddings = true;
  double init_std = 0.02;

  // The model: section of kind lm, declared once (keys, defaults, ranges, meanings).
  static const core::Schema<LMConfig>& schema();
  static LMConfig from_yaml(const core::Node& model);  // validates (also the `kind` key)
  // Fills vocab_size from the data when the config left it at 0; a configured vocabulary must
  // cover the data's. Throws ConfigError naming `where` (e.g. "configs/x.yaml:3: model.vocab_size").
  void resolve_vocab(int64_t data_vocab, const std::string& where = "model.vocab_size");
  // "model.key = this (source: other)" for every setting that changes the tensors or the function
  // (max_seq_len and init_std do not); empty when weights of `other` fit this model unchanged.
  std::vector<std::string> differences(const LMConfig& other) const;
  int64_t head_dim() const { return dim / n_heads; }
  bool gated() const { return ffn != Ffn::kRelu2; }
};

// Keys and values of every layer for incremental decoding.
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer [B, n_kv_heads, T_cached, head_dim]
  int64_t pos = 0;               // tokens already in the cache
};

// Keys and values of fixed capacity for decoding one token per step with every shape and address
// fixed, so that a step can be captured once in a CUDA graph and replayed (models/generate.cpp). The
// position is a device tensor: a step never reads it on the host.
struct StaticKVCache {
  std::vector<at::Tensor> k, v;  // per layer [1, n_kv_heads, capacity, head_dim], the model's dtype
  at::Tensor pos;                // int64 [1] on the model's device: tokens in the cache
  int64_t capacity = 0;
};

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const LMConfig& c, const bitlinear::QuantSpec& q_spec, const bitlinear::QuantSpec& k_spec,
                const bitlinear::QuantSpec& v_spec, const bitlinear::QuantSpec& o_spec);
  // x [B, T, dim], read through `norm` (the block's attn_norm; nullptr: none) -> [B, T, dim]. At
  // lambdas 1 on the CPU the norm and q/k/v are one fused node (BitLinear::fused_forward).
  at::Tensor forward(const at::Tensor& x, bitlinear::RMSNormImpl* norm, const at::Tensor& cos, const at::Tensor& sin,
                     KVCache* cache, size_t layer);
  // One token x [1, 1, dim] at position cache.pos: its key and value written there, attention over
  // positions <= pos (`visible` [capacity] bool). Does not advance pos.
  at::Tensor forward_static(const at::Tensor& x, bitlinear::RMSNormImpl* norm, const at::Tensor& cos,
                            const at::Tensor& sin, StaticKVCache& cache, size_t layer, const at::Tensor& visible);
  bitlinear::BitLinear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
  // When set, forward (without a cache) appends the projections q, k, v ([B, T, n_heads * head_dim],
  // [B, T, n_kv_heads * head_dim] twice, before the rotary embedding) for attention-relation
  // distillation (training/distill.hpp).
  std::vector<at::Tensor>* tap = nullptr;
};
TORCH_MODULE(Attention);

struct FFNImpl : torch::nn::Module {
  FFNImpl(const LMConfig& c, const bitlinear::QuantSpec& gate_spec, const bitlinear::QuantSpec& up_spec,
          const bitlinear::QuantSpec& down_spec);
  // x [B, T, dim], read through `norm` (the block's ffn_norm; nullptr: none) -> [B, T, dim]. At lambdas
  // 1 on the CPU the norm and the input projections are one fused node, and so are relu^2, down's
  // SubLN and down (BitLinear::fused_forward).
  at::Tensor forward(const at::Tensor& x, bitlinear::RMSNormImpl* norm = nullptr);
  bitlinear::BitLinear gate{nullptr}, up{nullptr}, down{nullptr};
  Ffn kind;
};
TORCH_MODULE(FFN);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const LMConfig& c, size_t index, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
            const std::vector<std::string>& exclude);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, KVCache* cache, size_t layer);
  at::Tensor forward_static(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, StaticKVCache& cache,
                            size_t layer, const at::Tensor& visible);
  bitlinear::RMSNorm attn_norm{nullptr}, ffn_norm{nullptr};
  Attention attn{nullptr};
  FFN ffn{nullptr};
};
TORCH_MODULE(Block);

struct BitLMImpl : torch::nn::Module {
  BitLMImpl(LMConfig config, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
            const std::vector<std::string>& exclude);
  // tokens [B, T] int64 -> logits [B, T, V] (float32). With a cache, positions continue from
  // cache->pos and the cache is extended.
  at::Tensor forward(const at::Tensor& tokens, KVCache* cache = nullptr);
  // The same logits, and the residual stream after each block in `layers` (hidden[i] is after block
  // layers[i], [B, T, dim] in the forward's dtype), for distillation's hidden-state loss.
  at::Tensor forward_hidden(const at::Tensor& tokens, const std::vector<int64_t>& layers,
                            std::vector<at::Tensor>* hidden);
  // What forward_hidden computes before the head: the final norm's output [B, T, dim] (the head's
  // input, in the forward's dtype). logits = features head_weight()^T.
  at::Tensor features(const at::Tensor& tokens, const std::vector<int64_t>& layers = {},
                      std::vector<at::Tensor>* hidden = nullptr);
  // The head's weight [V, dim]: lm_head's, or the embedding when tied.
  at::Tensor head_weight() const;
  // Mean cross-entropy of the next tokens: targets [B, T] int64 -> a float32 scalar. The head and
  // the loss run as one node over chunks of tokens (models/head_loss.hpp): no [B, T, V] logits.
  at::Tensor loss(const at::Tensor& tokens, const at::Tensor& targets);

  // Makes `cache` a static cache of `capacity` positions (<= max_seq_len) holding what `from` holds (a
  // prompt encoded by forward with a KVCache, batch 1). A cache of that capacity keeps its buffers, and
  // so the addresses a captured step reads. Throws std::invalid_argument when `from` does not fit.
  void load_static_cache(const KVCache& from, int64_t capacity, StaticKVCache& cache);
  // One decoding step: token [1, 1] int64 on the model's device -> logits [1, V] float32 of the next
  // token; the token's keys and values go into the cache at cache.pos, which then advances (on the
  // device). The caller keeps pos < capacity. No host synchronisation: capturable in a CUDA graph.
  at::Tensor decode_step(const at::Tensor& token, StaticKVCache& cache);

  LMConfig config;
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<Block> blocks;  // typed views of `layers`
  bitlinear::RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // absent when tied to the embedding
  // Runs the blocks of forward and forward_hidden without a KV cache: activation checkpointing and
  // block hooks (models/recompute.hpp). Cached and static-cache decoding call the blocks directly.
  BlockRunner block_runner;

 private:
  void init_weights();
  // The blocks and the final norm (features); head turns features into float32 logits.
  at::Tensor run(const at::Tensor& tokens, KVCache* cache, const std::vector<int64_t>& layers,
                 std::vector<at::Tensor>* hidden);
  at::Tensor head(const at::Tensor& h) const;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> rope_cache_;  // device -> (cos, sin) from position 0
  const std::pair<at::Tensor, at::Tensor>& rope_for(const at::Device& device, int64_t length);
};
TORCH_MODULE(BitLM);

// Rotary embedding tables for positions [pos, pos + T): cos, sin of shape [T, head_dim] in the
// "rotate half" layout of Hugging Face Llama (frequencies repeated for both halves).
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t pos, int64_t T, int64_t head_dim, double theta,
                                              const at::Device& device);
// x [B, H, T, D]: x * cos + rotate_half(x) * sin.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// The same on x [B, T, H, D] (the projections' layout), one fused pass each way on the CPU.
at::Tensor rope_bthd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// relu(x)^2 (the BitNet FFN activation) with a one-node backward 2 relu(x) g.
at::Tensor relu_squared(const at::Tensor& x);

}  // namespace bitqat::models
