// The one table of a Llama-family BitLM's tensors and their names in bitqat, Hugging Face
// transformers and GGUF, in the manner of gguf-py's TensorNameMap (gguf/tensor_mapping.py, with the
// GGUF names of gguf/constants.py TENSOR_NAMES). Every import and export of these formats walks it:
// the Hugging Face Llama import (hf_llama), the GGUF llama import (gguf_llama), the GGUF export
// (export_gguf) and the hf-bitnet export (export_hf_bitnet).
//
//   bitqat (models/lm.hpp)    Hugging Face                            GGUF
//   embed                     model.embed_tokens                      token_embd
//   layers.N.attn_norm        model.layers.N.input_layernorm          blk.N.attn_norm
//   layers.N.attn.q/k/v/o     model.layers.N.self_attn.q/k/v/o_proj   blk.N.attn_q/k/v/output
//   layers.N.attn.o.norm      model.layers.N.self_attn.attn_sub_norm  blk.N.attn_sub_norm (SubLN)
//   layers.N.ffn_norm         model.layers.N.post_attention_layernorm blk.N.ffn_norm
//   layers.N.ffn.gate/up/down model.layers.N.mlp.gate/up/down_proj    blk.N.ffn_gate/up/down
//   layers.N.ffn.down.norm    model.layers.N.mlp.ffn_sub_norm         blk.N.ffn_sub_norm (SubLN)
//   norm                      model.norm                              output_norm
//   lm_head                   lm_head                                 output (untied heads only)
// Each is a module whose tensor is `weight` in all three formats. The SubLN norms are those of
// transformers' BitNetForCausalLM (Llama has none). The GGUF llama architecture stores the rows of
// attn_q and attn_k permuted per head for llama.cpp's RoPE on adjacent pairs (convert_hf_to_gguf.py,
// LlamaModel.permute, with n_heads and n_kv_heads); bitnet GGUFs and Hugging Face keep bitqat's
// rotate-half order.
#pragma once
#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "models/lm.hpp"

namespace bitqat::interop {

// gguf-py's MODEL_TENSOR names.
enum class LlamaTensor {
  kTokenEmbd,
  kAttnNorm,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnOut,
  kAttnSubNorm,
  kFfnNorm,
  kFfnGate,
  kFfnUp,
  kFfnDown,
  kFfnSubNorm,
  kOutputNorm,
  kOutput,
};

// What a tensor is, which decides how exports write it.
enum class TensorRole {
  kEmbedding,  // token_embd: a float tensor
  kNorm,       // an RMSNorm's weight: float32
  kLinear,     // a BitLinear's weight: a block type when quantized, else a float tensor
  kHead,       // an untied LM head: a float tensor
};

// A dimension of the model, for shapes.
enum class LlamaDim {
  kNone,   // a 1-D tensor's missing second dimension
  kVocab,  // vocab_size
  kDim,    // dim
  kQDim,   // n_heads * head_dim
  kKvDim,  // n_kv_heads * head_dim
  kFfn,    // ffn_dim
};

// Which tensors a model has.
enum class LlamaPresence {
  kAlways,
  kSubNorm,  // model.sub_norm
  kGated,    // a gated FFN (model.ffn swiglu or relu2_glu)
  kUntied,   // model.tie_embeddings false
};

// Rows permuted for llama.cpp's RoPE in the GGUF llama architecture, per head of this count.
enum class RopeRows { kNone, kHeads, kKvHeads };

struct LlamaTensorName {
  LlamaTensor tensor;
  TensorRole role;
  const char* bitqat;   // the module; "{bid}" is the block number: "layers.{bid}.attn.q"
  const char* hf;       // transformers' module: "model.layers.{bid}.self_attn.q_proj"
  const char* gguf;     // llama.cpp's: "blk.{bid}.attn_q"
  LlamaDim rows, cols;  // the weight's torch shape [rows, cols] (cols kNone: [rows])
  LlamaPresence presence;
  RopeRows rope;
};

// The table, in model order: token_embd, the tensors of a block ("{bid}"), output_norm, output.
const std::vector<LlamaTensorName>& llama_tensor_names();
const LlamaTensorName& llama_tensor_name(LlamaTensor t);

// One tensor of a model of a given config: a table row with its names, shape and permutation filled in.
struct LlamaTensorEntry {
  const LlamaTensorName* row;
  int64_t block;                 // -1 outside the blocks
  std::string bitqat, hf, gguf;  // module names; the tensor is name + ".weight"
  std::vector<int64_t> shape;    // torch order
  int64_t rope_heads;            // heads of the GGUF llama q/k row permutation; 0: none
};

// Every tensor a BitLM with config `c` has, in model order: token_embd, each block's tensors, the final
// norm, the untied head.
std::vector<LlamaTensorEntry> llama_tensors(const models::LMConfig& c);

// The weight and, for kLinear rows, the BitLinear that an entry names in `lm`. std::logic_error when
// `lm` has no such module (the table and models/lm.cpp disagree).
at::Tensor llama_weight(const models::BitLMImpl& lm, const LlamaTensorEntry& e);
const bitlinear::BitLinearImpl& llama_linear(const models::BitLMImpl& lm, const LlamaTensorEntry& e);

}  // namespace bitqat::interop
