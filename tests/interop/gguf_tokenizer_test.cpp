// The tokenizer a GGUF export carries: the byte tokenizer, a Hugging Face tokenizer.json converted
// (and checked by llama.cpp tokenizing like the `tokenizers` package), a GGUF source's keys copied,
// a bitqat run's init_from followed.
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

namespace fs = std::filesystem;
namespace gguf = bitqat::checkpoints::gguf;
using namespace bitqat;

namespace {

fs::path temp_dir() {
  const auto d = fs::temp_directory_path() / ("bitqat_gguf_tok_" + std::to_string(::getpid()) + "_" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

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
  const auto t = interop::gpt2_byte_tokens();
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
  const auto dir = temp_dir();
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
  const auto dir = temp_dir();
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
  const auto dir = temp_dir();
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
  fs::remove_all(dir);
}

// The real check: a tokenizer trained with Hugging Face's `tokenizers` on KJV text, written into a
// llama-layout export, tokenizes text in llama.cpp exactly as `tokenizers` does: the ids of a token
// shard made with it, read back by bitqat's data pipeline (data::read_shard), equal llama.cpp's.
TEST(GgufTokenizer, LlamaCppTokenizesLikeTheSourceTokenizer) {
  BITQAT_REQUIRE_LLAMA_CPP_OR_SKIP(BITQAT_PYTHON);
  const auto dir = temp_dir();
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
