// The tokenizer.* metadata of a GGUF export (llama.cpp's src/llama-vocab.cpp reads it; the keys are
// gguf-py's constants.py Keys.Tokenizer), so that llama.cpp tokenizes text as the model was trained:
//   - byte-level models (bitqat's text data: one token per byte): model gpt2 with the 256 byte
//     tokens spelled in GPT-2's byte-to-unicode alphabet and no merges, so llama.cpp's BPE maps every
//     byte to its own id; no BOS added (bos = eos = token 0, the NUL byte, which text never holds);
//   - a source model's own tokenizer (the run's init_from):
//       a Hugging Face directory's tokenizer.json: BPE with GPT-2's byte-level pre-tokenizer
//         (ByteLevel, use_regex true, add_prefix_space false; llama.cpp's pre type "gpt-2"), or
//         SmolLM2's Sequence of Digits (individual_digits) and that ByteLevel (pre type "smollm"),
//         its vocabulary, merges and added tokens (special ones as CONTROL), bos / eos from
//         config.json or tokenizer_config.json; other tokenizers are refused naming what does not fit;
//       a GGUF file: its tokenizer.* keys, copied unchanged;
//       a bitqat run directory: its own init_from, followed.
//   Token lists shorter than the model's vocabulary are padded with "[PAD<id>]" tokens of type
//   UNUSED (as convert_hf_to_gguf.py does); longer ones are refused.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/gguf.hpp"
#include "data/bpe_tokenizer.hpp"

namespace bitqat::interop {

using GgufMetadata = std::vector<std::pair<std::string, checkpoints::gguf::Value>>;

GgufMetadata byte_tokenizer();

// The tokenizer of the model at `source` (see above) for a model of `vocab_size` tokens; nullopt
// when the source carries none. UserError naming the file and what was expected otherwise.
std::optional<GgufMetadata> source_tokenizer(const std::string& source, int64_t vocab_size);

// The tokenizer that metadata describes, to encode and decode text (data/bpe_tokenizer.hpp):
// tokenizer.ggml.model gpt2 with a pre type data::bpe_pre_types() lists. UserError naming `origin`,
// the key, its value and what was expected otherwise.
data::BpeTokenizer bpe_tokenizer(const GgufMetadata& metadata, const std::string& origin);

// source_tokenizer's tokenizer of `source` as a data::BpeTokenizer; nullopt when the source carries
// none. Errors name the file the tokenizer came from (the end of an init_from chain).
std::optional<data::BpeTokenizer> source_bpe_tokenizer(const std::string& source, int64_t vocab_size);

}  // namespace bitqat::interop
