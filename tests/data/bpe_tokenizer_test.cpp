// Byte-level BPE on vocabularies small enough to tokenize by hand: merge order (rank before position,
// leftmost of equal ranks), GPT-2's pre-tokenizer regex and SmolLM2's digit split, added tokens in
// the text, decoding, UTF-8 checks and the errors of a malformed vocabulary. The comparison with
// Hugging Face `tokenizers` on SmolLM2's own vocabulary is tests/interop/gguf_tokenizer_test.cpp's.
#include "data/bpe_tokenizer.hpp"

#include <gtest/gtest.h>

#include <set>

#include "core/error.hpp"
#include "tests/user_error.hpp"

using namespace bitqat::data;
using bitqat::testing::error_of;
using Ids = std::vector<int64_t>;

namespace {

// Ids 0..255 are the byte tokens (byte b is id b); then the merges' results, then two added tokens.
// "\xc4\xa0" is U+0120, GPT-2's spelling of the space byte (written `_` in the comments).
const std::string kSp = "\xc4\xa0";
constexpr int64_t kAb = 256, kSpA = 257, kAbc = 258, kAa = 259, kSpSp = 260, kTq = 261, kQs = 262, kEnd = 263,
                  kUser = 264;

BpeVocab tiny_vocab(const std::string& pre = "gpt-2") {
  BpeVocab v;
  v.tokens = gpt2_byte_tokens();
  for (const std::string& t : {std::string("ab"), kSp + "a", std::string("abc"), std::string("aa"), kSp + kSp,
                               std::string("t'"), std::string("'s"), std::string("<|end|>"), std::string("<u>")}) {
    v.tokens.push_back(t);
  }
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[kEnd] = TokenType::kControl;
  v.types[kUser] = TokenType::kUserDefined;
  // Ranks: "a b" first, then "_ a", "ab c", "a a", "_ _", "t '" and "' s".
  v.merges = {"a b", kSp + " a", "ab c", "a a", kSp + " " + kSp, "t '", "' s"};
  v.pre = pre;
  v.eos = kEnd;
  return v;
}

Ids bytes(const std::string& s) {
  Ids out;
  for (const char c : s) out.push_back(static_cast<unsigned char>(c));
  return out;
}

}  // namespace

TEST(BpeTokenizer, ByteTokensAreGpt2sAlphabet) {
  const auto t = gpt2_byte_tokens();
  ASSERT_EQ(t.size(), 256u);
  EXPECT_EQ(t['A'], "A");
  EXPECT_EQ(t[' '], kSp);
  EXPECT_EQ(t['\n'], "\xc4\x8a");  // U+010A
  EXPECT_EQ(t[0], "\xc4\x80");     // U+0100
  EXPECT_EQ(t[0xad], "\xc5\x83");  // the soft hyphen is not printable: U+0143
  EXPECT_EQ(std::set<std::string>(t.begin(), t.end()).size(), 256u);
}

TEST(BpeTokenizer, MergesByRankThenLeftmost) {
  const BpeTokenizer tok(tiny_vocab(), "tiny");
  EXPECT_EQ(tok.encode("abc"), (Ids{kAbc}));  // a b -> ab, then ab c -> abc
  // " ab": "_ a" (rank 1) and "a b" (rank 0) compete for the a; the lower rank wins, and "_ ab" is no merge.
  EXPECT_EQ(tok.encode(" ab"), (Ids{' ', kAb}));
  EXPECT_EQ(tok.encode(" a"), (Ids{kSpA}));
  // Equal ranks: the leftmost pair first.
  EXPECT_EQ(tok.encode("aaa"), (Ids{kAa, 'a'}));
  EXPECT_EQ(tok.encode("aaaa"), (Ids{kAa, kAa}));
  EXPECT_EQ(tok.encode("xyz"), bytes("xyz"));  // no merge applies: one token per byte
  EXPECT_EQ(tok.encode(""), Ids{});
  EXPECT_EQ(tok.size(), 265);
}

TEST(BpeTokenizer, Gpt2RegexSplitsBeforeMerging) {
  const BpeTokenizer tok(tiny_vocab(), "tiny");
  // "it's": "it" and "'s" are pieces, so "t '" cannot merge across them; "'s" merges.
  EXPECT_EQ(tok.encode("it's"), (Ids{'i', 't', kQs}));
  // Contractions are lower case only: "IT'S" is "IT", "'" and "S", and nothing merges.
  EXPECT_EQ(tok.encode("IT'S"), bytes("IT'S"));
  // "at'x": "at", "'", "x": the "t '" merge never sees its pair.
  EXPECT_EQ(tok.encode("at'x"), bytes("at'x"));
  // Whitespace before a word: the run keeps its last space for the word ("  a" is " " and " a").
  EXPECT_EQ(tok.encode("  a"), (Ids{' ', kSpA}));
  // At the end of the text the whole run is one piece, so "_ _" merges.
  EXPECT_EQ(tok.encode("x  "), (Ids{'x', kSpSp}));
  // Spaces before a digit under GPT-2's regex: " " and " 1".
  EXPECT_EQ(tok.encode("x  1"), (Ids{'x', ' ', ' ', '1'}));
}

TEST(BpeTokenizer, SmolLMSplitsEveryDigitFirst) {
  const BpeTokenizer gpt2(tiny_vocab("gpt-2"), "tiny"), smol(tiny_vocab("smollm"), "tiny");
  // SmolLM2's pre-tokenizer cuts the digit off first: the two spaces are a piece of their own and merge.
  EXPECT_EQ(smol.encode("x  1"), (Ids{'x', kSpSp, '1'}));
  EXPECT_EQ(gpt2.encode("x  1"), (Ids{'x', ' ', ' ', '1'}));
  EXPECT_EQ(smol.encode("a12b"), bytes("a12b"));
  // Any Unicode number, not only ASCII digits: "  \u0663" (ARABIC-INDIC DIGIT THREE).
  EXPECT_EQ(smol.encode("  \xd9\xa3"), (Ids{kSpSp, 0xd9, 0xa3}));
  EXPECT_EQ(smol.encode("  a"), gpt2.encode("  a"));
}

TEST(BpeTokenizer, AddedTokensInTheTextAreTheirIds) {
  const BpeTokenizer tok(tiny_vocab(), "tiny");
  EXPECT_EQ(tok.encode("ab<|end|>abc"), (Ids{kAb, kEnd, kAbc}));
  EXPECT_EQ(tok.encode("<|end|><|end|>"), (Ids{kEnd, kEnd}));
  EXPECT_EQ(tok.encode("<u> a"), (Ids{kUser, kSpA}));  // user-defined too, as `tokenizers` does
  EXPECT_EQ(tok.encode("<|end"), bytes("<|end"));      // not the whole token: plain text
  EXPECT_EQ(tok.decode({kAb, kEnd, kSpA}), "ab<|end|> a");
}

TEST(BpeTokenizer, DecodeInvertsEncode) {
  const BpeTokenizer tok(tiny_vocab("smollm"), "tiny");
  for (const std::string& s :
       {std::string("ab ab  aaa\n\n\t 12 it's <|end|>"), std::string("\xe4\xb8\xad\xe6\x96\x87 caf\xc3\xa9"),
        std::string("nul\0byte", 8), std::string(3000, 'a'), std::string("\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd"),
        std::string(10000, ' ') + "x", std::string(5000, '\n') + "a" + std::string(5000, '\t')}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
  }
  EXPECT_THROW(tok.decode({265}), std::out_of_range);
}

TEST(BpeTokenizer, InvalidUtf8IsRefusedWithItsOffset) {
  const BpeTokenizer tok(tiny_vocab(), "tiny");
  auto e = error_of([&] { tok.encode("ab\xff"); });
  EXPECT_NE(e.find("the text is not valid UTF-8: byte 0xff at offset 2"), std::string::npos) << e;
  e = error_of([&] { tok.encode("x\xc3"); });  // cut short
  EXPECT_NE(e.find("byte 0xc3 at offset 1"), std::string::npos) << e;
  EXPECT_EQ(invalid_utf8_offset("a\xc0\xaf"), 1u);         // overlong "/"
  EXPECT_EQ(invalid_utf8_offset("\xed\xa0\x80"), 0u);      // a surrogate
  EXPECT_EQ(invalid_utf8_offset("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(invalid_utf8_offset("ok \xe2\x82\xac"), std::nullopt);
  EXPECT_EQ(invalid_utf8_offset("ok \xe2\x82", true), std::nullopt);
  EXPECT_EQ(invalid_utf8_offset("ok \xe2\x82"), 3u);
  // Printing: invalid bytes become U+FFFD, a character cut short at the end is left out.
  EXPECT_EQ(printable_utf8("a\xff"
                           "b"),
            "a\xef\xbf\xbd"
            "b");
  EXPECT_EQ(printable_utf8("a\xe2\x82"), "a");
  EXPECT_EQ(printable_utf8("\xe2\x82\xac"), "\xe2\x82\xac");
}

TEST(BpeTokenizer, MalformedVocabulariesAreRefused) {
  auto v = tiny_vocab("llama3");
  auto e = error_of([&] { BpeTokenizer(v, "m.gguf"); });
  EXPECT_NE(e.find("m.gguf: tokenizer.ggml.pre = llama3: bitqat's byte-level BPE runs the pre-tokenizers gpt-2, "
                   "smollm"),
            std::string::npos)
      << e;
  v = tiny_vocab();
  v.tokens[10] = "not a byte";
  e = error_of([&] { BpeTokenizer(v, "m.gguf"); });
  EXPECT_NE(e.find("m.gguf: tokenizer.ggml.tokens lacks the byte token \"\xc4\x8a\" (byte 0x0a)"), std::string::npos)
      << e;
  v = tiny_vocab();
  v.merges.push_back("x y");
  e = error_of([&] { BpeTokenizer(v, "m.gguf"); });
  EXPECT_NE(e.find("tokenizer.ggml.merges[7] = \"x y\": its parts and their concatenation must be tokens"),
            std::string::npos)
      << e;
  v = tiny_vocab();
  v.merges.push_back("ab");
  e = error_of([&] { BpeTokenizer(v, "m.gguf"); });
  EXPECT_NE(e.find("tokenizer.ggml.merges[7] = \"ab\": expected two tokens separated by one space"), std::string::npos)
      << e;
  v = tiny_vocab();
  v.types.pop_back();
  EXPECT_THROW(BpeTokenizer(v, "m.gguf"), bitqat::core::UserError);
  v = tiny_vocab();
  v.bos = 265;
  e = error_of([&] { BpeTokenizer(v, "m.gguf"); });
  EXPECT_NE(e.find("tokenizer.ggml.bos_token_id = 265: expected an id below 265"), std::string::npos) << e;
}
