// The tokenizer a GGUF export carries: the byte tokenizer, a Hugging Face tokenizer.json converted
// (and checked by llama.cpp tokenizing like the `tokenizers` package), a GGUF source's keys copied,
// a bitqat run's init_from followed; the text tokenizer built from that metadata, against Hugging
// Face's on SmolLM2's vocabulary.
#include "interop/gguf_tokenizer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"
#include "interop/export_gguf.hpp"
#include "tests/command.hpp"
#include "tests/llama_cpp.hpp"
#include "tests/temp_dir.hpp"
#include "tests/user_error.hpp"

namespace fs = std::filesystem;
namespace gguf = bitqat::checkpoints::gguf;
using namespace bitqat;

namespace {

const gguf::Value* find(const interop::GgufMetadata& m, const std::string& key) {
  for (const auto& [k, v] : m) {
    if (k == key) return &v;
  }
  return nullptr;
}

// A hand-written tokenizer.json: 4 byte-level tokens, one merge, one special token.
const char* kTinyTokenizer = R"({
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "added_tokens": [{"id": 4, "content": "<s>", "special": true}],
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "\u0120": 2, "ab": 3}, "merges": [["a", "b"]]}
})";

}  // namespace

TEST(GgufTokenizer, ByteTokensAreGpt2sAlphabet) {
  const auto t = data::gpt2_byte_tokens();
  ASSERT_EQ(t.size(), 256u);
  EXPECT_EQ(t['A'], "A");
  EXPECT_EQ(t[' '], "\xc4\xa0");   // U+0120
  EXPECT_EQ(t['\n'], "\xc4\x8a");  // U+010A
  EXPECT_EQ(t[0], "\xc4\x80");     // U+0100
  EXPECT_EQ(std::set<std::string>(t.begin(), t.end()).size(), 256u);
  const auto m = interop::byte_tokenizer();
  EXPECT_EQ(find(m, "tokenizer.ggml.model")->data, "gpt2");
  EXPECT_EQ(find(m, "tokenizer.ggml.add_bos_token")->data, false);
}

TEST(GgufTokenizer, ConvertsAHuggingFaceBpeTokenizer) {
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  core::write_file_atomic((dir / "tokenizer.json").string(), kTinyTokenizer);
  core::write_file_atomic((dir / "config.json").string(), R"({"bos_token_id": 4, "eos_token_id": 1})");
  const auto m = interop::source_tokenizer(dir.string(), 7);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(find(*m, "tokenizer.ggml.pre")->data, "gpt-2");
  EXPECT_EQ(find(*m, "tokenizer.ggml.tokens")->data,
            nlohmann::json({"a", "b", "\xc4\xa0", "ab", "<s>", "[PAD5]", "[PAD6]"}));
  // NORMAL 1, CONTROL 3, UNUSED 5 (llama.cpp's llama_token_type).
  EXPECT_EQ(find(*m, "tokenizer.ggml.token_type")->data, nlohmann::json({1, 1, 1, 1, 3, 5, 5}));
  EXPECT_EQ(find(*m, "tokenizer.ggml.merges")->data, nlohmann::json({"a b"}));
  EXPECT_EQ(find(*m, "tokenizer.ggml.bos_token_id")->data, 4);
  EXPECT_EQ(find(*m, "tokenizer.ggml.eos_token_id")->data, 1);
  // A vocabulary smaller than the tokenizer's is refused.
  try {
    interop::source_tokenizer(dir.string(), 4);
    ADD_FAILURE();
  } catch (const core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("\"<s>\" has id 4: expected ids below model.vocab_size = 4"),
              std::string::npos)
        << e.what();
  }
  // A bitqat run whose init_from is that directory leads to it.
  const auto run = dir / "run";
  fs::create_directories(run);
  core::write_file_atomic((run / "config.resolved.yaml").string(), "init_from: " + dir.string() + "\n");
  EXPECT_EQ(find(*interop::source_tokenizer(run.string(), 7), "tokenizer.ggml.merges")->data, nlohmann::json({"a b"}));
  // A run started from scratch carries none.
  core::write_file_atomic((run / "config.resolved.yaml").string(), "run: {name: x}\n");
  EXPECT_FALSE(interop::source_tokenizer(run.string(), 7).has_value());
  fs::remove_all(dir);
}

TEST(GgufTokenizer, RefusesTokenizersLlamaCppWouldRunDifferently) {
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  auto j = nlohmann::json::parse(kTinyTokenizer);
  j["model"]["type"] = "WordPiece";
  core::write_file_atomic((dir / "tokenizer.json").string(), j.dump());
  try {
    interop::source_tokenizer(dir.string(), 8);
    ADD_FAILURE();
  } catch (const core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: model.type is WordPiece"), std::string::npos) << e.what();
  }
  j = nlohmann::json::parse(kTinyTokenizer);
  j["pre_tokenizer"]["add_prefix_space"] = true;
  core::write_file_atomic((dir / "tokenizer.json").string(), j.dump());
  EXPECT_THROW(interop::source_tokenizer(dir.string(), 8), core::UserError);
  fs::remove_all(dir);
}

TEST(GgufTokenizer, CopiesAGgufSourcesTokenizerKeys) {
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  gguf::File f;
  f.metadata = {{"general.architecture", gguf::Value::str("llama")},
                {"tokenizer.ggml.model", gguf::Value::str("gpt2")},
                {"tokenizer.ggml.pre", gguf::Value::str("smollm")},
                {"tokenizer.ggml.tokens", gguf::Value::array(gguf::ValueType::kString, {"x", "y", "z"})}};
  f.tensors.push_back(gguf::float_tensor("t", at::zeros({4})));
  const auto path = (dir / "src.gguf").string();
  gguf::save(path, f);
  const auto m = interop::source_tokenizer(path, 3);
  ASSERT_TRUE(m.has_value());
  ASSERT_EQ(m->size(), 3u);
  EXPECT_EQ(find(*m, "tokenizer.ggml.pre")->data, "smollm");
  EXPECT_EQ(find(*m, "general.architecture"), nullptr);
  EXPECT_THROW(interop::source_tokenizer(path, 4), core::UserError);
  // As a text tokenizer: refused for what it lacks, naming the file.
  auto e = bitqat::testing::error_of([&] { interop::source_bpe_tokenizer(path, 3); });
  EXPECT_NE(e.find(path + ": tokenizer.ggml.tokens lacks the byte token"), std::string::npos) << e;
  e = bitqat::testing::error_of([&] {
    interop::bpe_tokenizer({{"tokenizer.ggml.model", gguf::Value::str("llama")}}, "x.gguf");
  });
  EXPECT_NE(e.find("x.gguf: tokenizer.ggml.model = llama: bitqat's tokenizer runs gpt2 (byte-level BPE) "
                   "vocabularies only"),
            std::string::npos)
      << e;
  e = bitqat::testing::error_of([&] {
    interop::bpe_tokenizer({{"tokenizer.ggml.model", gguf::Value::str("gpt2")}}, "x.gguf");
  });
  EXPECT_NE(e.find("x.gguf: tokenizer.ggml.pre is missing"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(GgufTokenizer, SmolLM2sHuggingFacePreTokenizerIsSmollm) {
  // SmolLM2's tokenizer.json: each digit on its own, then GPT-2's byte level.
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  auto j = nlohmann::json::parse(kTinyTokenizer);
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Digits"}, {"individual_digits", true}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}};
  core::write_file_atomic((dir / "tokenizer.json").string(), j.dump());
  EXPECT_EQ(find(*interop::source_tokenizer(dir.string(), 5), "tokenizer.ggml.pre")->data, "smollm");
  j["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = false;
  core::write_file_atomic((dir / "tokenizer.json").string(), j.dump());
  const auto e = bitqat::testing::error_of([&] { interop::source_tokenizer(dir.string(), 5); });
  EXPECT_NE(e.find("tokenizer.json: its pre_tokenizer is {"), std::string::npos) << e;
  fs::remove_all(dir);
}

// SmolLM2's vocabulary, read from its GGUF, tokenizes like Hugging Face's `tokenizers`: on the KJV
// (what the SmolLM2 run trains on) and on texts chosen to break tokenizers. Two references: SmolLM2's
// own pre-tokenizer (its tokenizer.json: digits split first, then GPT-2's byte level) built directly
// in `tokenizers`, and the tokenizer tools/prepare_shards.py makes the shards with (transformers
// loading the GGUF, which would give GPT-2's pre-tokenizer, with the file's "smollm" put back).
TEST(GgufTokenizer, SmolLM2TokenizesLikeTransformers) {
  const std::string smollm2 = std::string(BITQAT_SOURCE_DIR) + "/data/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(smollm2)) GTEST_SKIP() << smollm2 << " is absent: launch/setup.sh --tests puts it there";
  const std::string kjv_path = std::string(BITQAT_SOURCE_DIR) + "/data/cache/kjv.txt";
  ASSERT_TRUE(fs::exists(kjv_path)) << kjv_path << " is missing: run data/prepare_kjv.sh (launch/setup.sh does)";
  const auto tok = interop::source_bpe_tokenizer(smollm2, 49152);
  ASSERT_TRUE(tok.has_value());
  EXPECT_EQ(tok->vocab().pre, "smollm");
  const auto kjv = core::read_file(kjv_path);
  ASSERT_EQ(kjv.find_first_of("0123456789"), std::string::npos);
  std::vector<std::string> cases = {kjv.substr(0, 200000), kjv.substr(kjv.size() - 50000)};
  const size_t kjv_cases = cases.size();
  std::string long_word;
  for (int i = 0; i < 2000; ++i) long_word += "supercalifragilistic";
  for (const std::string& s :
       {// emoji: ZWJ sequences, skin tones, variation selectors, flags
        std::string("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 family, "
                    "\xf0\x9f\x8f\xb3\xef\xb8\x8f\xe2\x80\x8d\xf0\x9f\x8c\x88 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd "
                    "\xe2\x9d\xa4\xef\xb8\x8f\xf0\x9f\x87\xab\xf0\x9f\x87\xb7!!"),
        // combining marks, decomposed and stacked
        std::string("e\xcc\x81 a\xcc\x88 n\xcc\x83 Z\xcd\x91\xcd\x92\xcd\x93\xcc\x80 cafe\xcc\x81"),
        // CJK, Japanese, Korean; Arabic with Arabic-Indic digits
        std::string("\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81"
                    "\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88\xe3\x80\x81\xed\x95\x9c\xea\xb5\xad\xec"
                    "\x96\xb4"),
        std::string("\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84\xd9"
                    "\x85  \xd9\xa1\xd9\xa2\xd9\xa3 \xd9\xa4\xd9\xa5"),
        // digit runs and other numbers (superscripts, fractions, Roman numerals)
        std::string("1234567890 3.14159 1,000,000  42\t\t7 x2 \xc2\xb2\xc2\xb3 \xc2\xbd \xe2\x85\xab"),
        // whitespace runs with CR LF and tabs; no-break, ideographic and line-separator spaces
        std::string("a\r\nb\t\tc   d \n\n e\r\n\r\n\t \xc2\xa0nbsp\xe3\x80\x80ideographic\xe2\x80\xa8 "),
        // next line, vertical tab, form feed, Mongolian vowel separator (not White_Space since Unicode 6.3)
        std::string("a\xc2\x85 b\x0b\x0c c \xe1\xa0\x8e d\xe1\xa0\x8e e"),
        std::string(3000, ' ') + "x" + std::string(3000, '\n'),
        // leading spaces and newlines
        std::string("   leading spaces"), std::string(" x"), std::string("\n\nnewlines first"),
        // contractions, upper and lower case
        std::string("IT'S I'VE YOU'RE WE'LL THEY'D I'M it's I've you're we'll they'd I'm don't 'S 'VE's"),
        // NUL and other control bytes; 0x04 and 0x06 have no token in SmolLM2's vocabulary (left out)
        std::string("a\0b\0\0 c\x01\x1f\x7f", 10), std::string("!\x04!, \x06x \x04\x04 !\x06"),
        // very long words, with and without merges
        std::string(10000, 'a'), long_word,
        // special tokens in the text, and almost-special ones
        std::string("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
        std::string("<|im_start|><|im_start|>x<|endoftext|>y <|im_start <|im_end|"),
        std::string("Hello, World! How's it going? $100 #tag @user a@b.com http://x.y/z?q=1&b=2 ~~~ ...")}) {
    cases.push_back(s);
  }
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  core::write_file_atomic((dir / "cases.json").string(), nlohmann::json(cases).dump());
  const auto r = bitqat::testing::run_command(std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR +
                                              "/tests/interop/smollm2_tokenizer_check.py " + smollm2 + " " +
                                              (dir / "cases.json").string() + " " + (dir / "hf.json").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto hf = nlohmann::json::parse(core::read_file((dir / "hf.json").string()));
  size_t tokens = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto ours = tok->encode(cases[i]);
    tokens += ours.size();
    const auto own = hf["own"][i].get<std::vector<int64_t>>();
    const auto shards = hf["shards"][i].get<std::vector<int64_t>>();
    EXPECT_EQ(ours, own) << "case " << i << ": " << cases[i].substr(0, 200);
    EXPECT_EQ(ours, shards) << "case " << i << ": " << cases[i].substr(0, 200);
    auto kept = cases[i];  // what the tokens spell: the text less the bytes without a token
    kept.erase(std::remove_if(kept.begin(), kept.end(), [](char c) { return c == '\x04' || c == '\x06'; }), kept.end());
    EXPECT_EQ(tok->decode(ours), kept) << "case " << i;
  }
  std::printf("%zu texts (%zu of the KJV), %zu tokens\n", cases.size(), kjv_cases, tokens);
  fs::remove_all(dir);
}

// The real check: a tokenizer trained with Hugging Face's `tokenizers` on KJV text, written into a
// llama-layout export, tokenizes text in llama.cpp exactly as `tokenizers` does: the ids of a token
// shard made with it, read back by bitqat's data pipeline (data::read_shard), equal llama.cpp's.
TEST(GgufTokenizer, LlamaCppTokenizesLikeTheSourceTokenizer) {
  BITQAT_REQUIRE_LLAMA_CPP_OR_SKIP(BITQAT_PYTHON);
  const auto dir = bitqat::testing::fresh_test_dir("gguf_tok");
  const std::string kjv = std::string(BITQAT_SOURCE_DIR) + "/data/cache/kjv.txt";
  ASSERT_TRUE(fs::exists(kjv)) << kjv << " is missing: run data/prepare_kjv.sh (launch/setup.sh does)";
  const auto all = core::read_file(kjv);
  core::write_file_atomic((dir / "train.txt").string(), all.substr(0, 200000));
  core::write_file_atomic((dir / "sample.txt").string(),
                          all.substr(all.size() - 3000) + "caf\xc3\xa9 \xe2\x80\x94 1234 it's   done\n");
  const std::string py = std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR + "/tests/interop/hf_tokenizer_check.py ";
  const auto made =
      bitqat::testing::run_command(py + "make " + (dir / "hf").string() + " " + (dir / "train.txt").string() + " 400");
  ASSERT_EQ(made.code, 0) << made.out;
  models::LMConfig c;
  c.vocab_size = 512;  // larger than the tokenizer: padded
  c.dim = 256;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.ffn = bitqat::models::Ffn::kSwiglu;
  c.ffn_dim = 256;
  c.sub_norm = false;
  const models::BitLM lm(c, bitlinear::QuantSpec{}, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
  interop::GgufExportOptions o;
  o.name = "tok";
  o.tokenizer_source = (dir / "hf").string();
  const auto model = (dir / "m.gguf").string();
  interop::export_gguf(*lm, model, o);
  const auto [rc, out] = bitqat::testing::run_command(py + "compare " + (dir / "hf").string() + " " + model + " " +
                                                      (dir / "sample.txt").string());
  std::printf("%s", out.c_str());
  EXPECT_EQ(rc, 0) << out << "\n(llama.cpp comes from launch/setup.sh --tests)";
  EXPECT_NE(out.find("tokens equal"), std::string::npos) << out;
  // The ids as bitqat's data pipeline reads them from the shard, against llama.cpp's.
  const auto trained_on = data::read_shard((dir / "hf" / "sample_hf.bin").string());
  const auto llama_cpp = data::read_shard((dir / "hf" / "sample_llama_cpp.bin").string());
  EXPECT_EQ(trained_on, llama_cpp);
  const auto bytes = core::read_file((dir / "sample.txt").string()).size();
  EXPECT_LT(trained_on.size(), bytes / 2);  // the merges were used: well under one token per byte
  EXPECT_TRUE(std::any_of(trained_on.begin(), trained_on.end(), [](uint16_t t) { return t >= 258; }));
  fs::remove_all(dir);
}
