// Byte-level BPE, GPT-2's scheme: UTF-8 text to token ids and back, as Hugging Face `tokenizers`
// runs a BPE model behind a ByteLevel pre-tokenizer (tokenizers/src/models/bpe, pre_tokenizers/
// byte_level.rs) and llama.cpp runs a GGUF's "gpt2" vocabulary (src/llama-vocab.cpp,
// llm_tokenizer_bpe). Only the vocabulary is here, no file format: interop/gguf_tokenizer builds one
// from a GGUF's tokenizer.* metadata or a Hugging Face tokenizer.json.
//
// encode(text):
//   1. the text must be valid UTF-8 (UserError naming the byte offset otherwise);
//   2. added tokens (CONTROL and USER_DEFINED types: "<|im_start|>", ...) found in the text become
//      their ids, leftmost and longest first, as `tokenizers` does by default
//      (`encode(text, add_special_tokens=False)` still splits on added tokens; llama.cpp does so with
//      parse_special); the text between them is pre-tokenized and merged;
//   3. pre-tokenization by the regexes of the vocabulary's `pre` type (llama.cpp's
//      tokenizer.ggml.pre):
//        "gpt-2":  GPT-2's regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
//                  \s+(?!\S)|\s+), case-sensitive, no prefix space: HF ByteLevel(use_regex true,
//                  add_prefix_space false);
//        "smollm": every \p{N} character on its own first, then GPT-2's regex on the rest: HF
//                  Sequence[Digits(individual_digits true), ByteLevel] (SmolLM2's tokenizer.json),
//                  llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM;
//      the regexes run in PCRE2 (UTF and Unicode-property mode);
//   4. each piece's bytes, spelled in GPT-2's byte-to-unicode alphabet, are merged pairwise by the
//      lowest merge rank first (the leftmost of equal ranks), until no merge applies; a byte without
//      a token in the vocabulary is left out, as `tokenizers` does (SmolLM2 lacks a few control bytes).
// No BOS or EOS is added (`add_bos` says whether the model's documents start with `bos`).
// decode(ids): the bytes the tokens spell (added and unused tokens as their text).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bitqat::data {

// llama.cpp's llama_token_type (llama-vocab.h); gguf's tokenizer.ggml.token_type.
enum class TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct BpeVocab {
  std::vector<std::string> tokens;  // id -> text; normal tokens in GPT-2's byte-to-unicode spelling
  std::vector<TokenType> types;     // per token; empty: all normal
  std::vector<std::string> merges;  // "left right" (one space), highest priority first
  std::string pre = "gpt-2";        // pre-tokenizer: one of bpe_pre_types()
  std::optional<int64_t> bos, eos;
  bool add_bos = false;  // the model's documents start with bos
};

// The pre-tokenizer types encode() runs ("gpt-2", "smollm").
const std::vector<std::string>& bpe_pre_types();

// The 256 byte tokens in GPT-2's byte-to-unicode spelling (UTF-8), index = byte: printable bytes keep
// their code point, the others map in byte order to U+0100, U+0101, ...
std::vector<std::string> gpt2_byte_tokens();

// The offset of the first byte that does not start or continue a valid UTF-8 sequence (overlong
// forms, surrogates and code points above U+10FFFF are invalid); nullopt for valid text. With
// `allow_truncated_end`, a sequence cut short by the end of the text counts as valid.
std::optional<size_t> invalid_utf8_offset(const std::string& text, bool allow_truncated_end = false);

// `bytes` as valid UTF-8 for printing: an invalid sequence becomes U+FFFD (as Hugging Face's decode
// does), a sequence cut short at the very end is dropped (the rest of it was never generated).
std::string printable_utf8(const std::string& bytes);

class BpeTokenizer {
 public:
  // Throws UserError, prefixed by `origin` (the file it came from), for a pre type not in
  // bpe_pre_types(), no token for a printable ASCII byte, space or newline, a malformed merge or
  // one whose parts or result are not tokens, types of another length than tokens, bos / eos out of
  // range.
  BpeTokenizer(BpeVocab vocab, const std::string& origin);
  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;

  // UserError for text that is not valid UTF-8 (naming the byte offset and the byte).
  std::vector<int64_t> encode(const std::string& text) const;
  // std::out_of_range for an id outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;

  const BpeVocab& vocab() const;
  int64_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bitqat::data
