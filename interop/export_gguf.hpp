// The `gguf` export: one GGUF v3 file for llama.cpp's `bitnet` architecture. Block linears are
// TQ2_0 (default) or TQ1_0 with each block's fp16 scale d = the layer's absmean scale for that
// block (per tensor, per channel, or per group of a multiple of 256), so d * code equals bitqat's
// dequantized weight up to fp16 rounding of the scale; no separate `.scale` tensors. Embeddings and
// norms are F32; the LM head is the tied token embedding (llama.cpp's bitnet graph reads no output
// tensor). Metadata: bitnet.{context_length, embedding_length, block_count, feed_forward_length,
// attention.head_count(_kv), attention.layer_norm_rms_epsilon, rope.freq_base,
// rope.dimension_count, vocab_size, hidden_activation = relu2} and a byte-level tokenizer: model
// gpt2 with the 256 byte tokens spelled in GPT-2's byte-to-unicode alphabet and no merges, so that
// llama.cpp's BPE maps every byte to its own token id; no BOS is added (bos = eos = token 0, the
// NUL byte, which text never holds). RoPE needs no q/k permutation: llama.cpp runs bitnet with
// NEOX (rotate-half) RoPE, bitqat's layout.
#pragma once
#include <string>

#include "checkpoints/gguf.hpp"
#include "models/lm.hpp"

namespace bitqat::interop {

// Throws core::UserError naming the first model option the bitnet GGUF layout cannot express.
void check_gguf_compatible(const models::BitLMImpl& lm);

// The GGUF contents of a model (type kTQ2_0 or kTQ1_0).
checkpoints::gguf::File gguf_from_lm(const models::BitLMImpl& lm, checkpoints::gguf::GgmlType type,
                                     const std::string& name);

// The 256 byte tokens in GPT-2's byte-to-unicode spelling (UTF-8), index = byte.
std::vector<std::string> gpt2_byte_tokens();

// Writes the file atomically; refuses an existing path. Returns the file size in bytes.
int64_t export_gguf(const models::BitLMImpl& lm, const std::string& out_path, checkpoints::gguf::GgmlType type,
                    const std::string& name);

}  // namespace bitqat::interop
