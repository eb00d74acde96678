// Importing a Llama-architecture model from a GGUF file (llama.cpp's format, as published on the
// Hub: F32 / F16 / BF16 or block-quantized weights) into BitLM, dequantized to float32.
//
// The model comes from the metadata (llama.cpp's LLM_KV names, src/llama-arch.cpp):
//   general.architecture = "llama" (anything else is refused, naming it)
//   llama.embedding_length -> dim               llama.block_count -> n_layers
//   llama.attention.head_count -> n_heads       llama.attention.head_count_kv -> n_kv_heads
//   llama.feed_forward_length -> ffn_dim        llama.context_length -> max_seq_len
//   llama.rope.freq_base -> rope_theta (default 10000)
//   llama.attention.layer_norm_rms_epsilon -> norm_eps
//   vocab_size: llama.vocab_size, else the rows of token_embd.weight
//   tie_embeddings: true when output.weight is absent (llama.cpp then uses token_embd)
// Float32 metadata values (rope_theta, norm_eps) are taken at their shortest decimal (float32
// 1e-5 becomes the double 1e-5), so that a config section can spell them.
// Refused by name: RoPE scaling (llama.rope.scaling.type other than none, rope_freqs.weight),
// rope.dimension_count or attention.key_length / value_length other than the head size, experts
// (llama.expert_count > 0), and any tensor a Llama block does not have (biases, ...).
//
// Tensor names, shapes and the q/k permutation: interop/llama_tensor_names.hpp (GGUF -> bitqat; GGUF
// dims are innermost first, torch shapes are reversed).
// llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of q and k
// from Hugging Face's rotate-half RoPE layout to ggml's adjacent pairs; the import undoes it
// (the rows of each head: [pair 0 first halves.., pair 0 second halves..] <- interleaved), so that
// the imported model is the Hugging Face function bitqat's RoPE computes.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "checkpoints/gguf.hpp"
#include "models/lm.hpp"
#include "models/state_dict.hpp"

namespace bitqat::interop {

// The BitLM config of a GGUF's metadata (ffn: swiglu, sub_norm: false); UserErrors name `origin`,
// the key, its value and what was expected.
models::LMConfig lm_config_from_gguf(const checkpoints::gguf::File& f, const std::string& origin);

struct GGUFCheckpoint {
  models::LMConfig config;
  models::LazyTensors tensors;  // bitqat names; each dequantized to float32 when read
  checkpoints::gguf::File file;
};

// True when PATH is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// Maps PATH and checks the metadata and every tensor (name, shape, type) before anything is read.
GGUFCheckpoint load_gguf_llama(const std::string& path);

// Rows of a GGUF q or k weight [n_heads * head_dim, in] back in Hugging Face's order (the inverse
// of llama.cpp's LlamaModel.permute with n_heads heads).
at::Tensor unpermute_rope_rows(const at::Tensor& w, int64_t n_heads);

}  // namespace bitqat::interop
