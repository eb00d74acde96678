// tools/prepare_shards.py against tokenizations known by hand (make_tokenizers.py's tiny word-level
// and BPE tokenizers): the shards it writes, read back with bitqat's own shard reader, hold exactly
// the expected token ids, in llm.c's uint16 or uint32 layout, with the documents' boundaries the
// tokenizer's settings (or --boundary) call for; bad arguments exit with status 2 and a message.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"
#include "tests/command.hpp"
#include "training/config.hpp"
#include "training/task.hpp"

namespace fs = std::filesystem;
using bitqat::testing::run_command;
using V = std::vector<uint32_t>;

namespace {

class PrepareShardsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("bitqat_prepare_shards_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ASSERT_FALSE(python().empty()) << "configure with -DPython3_EXECUTABLE=.venv/bin/python";
    const auto r = run_command(fmt::format("'{}' '{}/tests/tools/make_tokenizers.py' '{}'", python(), BITQAT_SOURCE_DIR,
                                           (dir_ / "tok").string()));
    ASSERT_EQ(r.code, 0) << r.out;
    bitqat::core::write_file_atomic((dir_ / "doc1.txt").string(),
                                    "In the beginning God created the heaven and the earth.");
    bitqat::core::write_file_atomic((dir_ / "doc2.txt").string(), "And God");
    bitqat::core::write_file_atomic((dir_ / "wide.txt").string(), "w69999 w5 w65536");
    bitqat::core::write_file_atomic((dir_ / "bpe.txt").string(), "abc ab a");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string python() { return BITQAT_PYTHON; }

  // Runs the tool with `args` (output in dir_/out/<name>); returns its exit status and output.
  static bitqat::testing::CommandResult prepare(const std::string& name, const std::string& args) {
    return run_command(fmt::format("cd '{}' && '{}' '{}/tools/prepare_shards.py' --out 'out/{}' --name {} {}",
                                   dir_.string(), python(), BITQAT_SOURCE_DIR, name, name, args));
  }
  static V tokens(const std::string& name, const std::string& split) {
    return bitqat::data::read_shard_tokens((dir_ / "out" / name / (name + "_" + split + "_000000.bin")).string());
  }
  static nlohmann::json manifest(const std::string& name) {
    return nlohmann::json::parse(bitqat::core::read_file((dir_ / "out" / name / (name + ".manifest.json")).string()));
  }
  static int32_t magic(const std::string& name, const std::string& split) {
    const auto b =
        bitqat::core::read_file_range((dir_ / "out" / name / (name + "_" + split + "_000000.bin")).string(), 0, 4);
    int32_t m = 0;
    std::memcpy(&m, b.data(), 4);
    return m;
  }

  static fs::path dir_;
};
fs::path PrepareShardsTest::dir_;

}  // namespace

// "In the beginning God created the heaven and the earth." is <s> in the beginning god created the
// heaven and the earth . = 1 3 4 5 6 7 4 8 9 4 10 11; "And God" is 1 9 6. The tokenizer adds <s>
// to each document: 15 tokens, the last floor(15 * 0.25) = 3 held out.
TEST_F(PrepareShardsTest, HuggingFaceTokenizerFollowsItsOwnBosSetting) {
  const auto r = prepare("words", "--tokenizer tok/words --val-fraction 0.25 doc1.txt doc2.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(tokens("words", "train"), (V{1, 3, 4, 5, 6, 7, 4, 8, 9, 4, 10, 11}));
  EXPECT_EQ(tokens("words", "val"), (V{1, 9, 6}));
  EXPECT_EQ(magic("words", "train"), bitqat::data::kShardMagic);  // 12 tokens: uint16
  EXPECT_NE(r.out.find("vocabulary 12; --boundary tokenizer: each document starts with ['<s> (1)'] and ends with "
                       "nothing"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("train: 12 tokens in 1 file(s); val: 3 tokens in 1 file(s); uint16 tokens"), std::string::npos)
      << r.out;
  const auto m = manifest("words");
  EXPECT_EQ(m["tokenizer"]["vocab_size"], 12);
  EXPECT_EQ(m["tokenizer"]["kind"], "hf");
  EXPECT_EQ(m["boundary"]["document_start"], nlohmann::json::array({1}));
  EXPECT_EQ(m["train"]["tokens"], 12);
  EXPECT_EQ(m["val"]["tokens"], 3);
  EXPECT_EQ(m["sources"].size(), 2u);
  EXPECT_EQ(m["sources"][1]["bytes"], 7);
}

TEST_F(PrepareShardsTest, BoundaryEosAndNoneAndASeparateValidationFile) {
  auto r = prepare("eos", "--tokenizer tok/words --boundary eos --val doc2.txt doc1.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(tokens("eos", "train"), (V{1, 3, 4, 5, 6, 7, 4, 8, 9, 4, 10, 11, 2}));
  EXPECT_EQ(tokens("eos", "val"), (V{1, 9, 6, 2}));
  EXPECT_NE(r.out.find("each document starts with ['<s> (1)'] and ends with ['</s> (2)']"), std::string::npos) << r.out;
  r = prepare("none", "--tokenizer tok/words --boundary none --val-fraction 0.2 doc1.txt doc2.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(tokens("none", "train"), (V{3, 4, 5, 6, 7, 4, 8, 9, 4, 10, 11}));
  EXPECT_EQ(tokens("none", "val"), (V{9, 6}));  // floor(13 * 0.2) = 2
}

// 70,001 tokens do not fit uint16: llm.c's uint32 layout, read back by bitqat; w69999 w5 w65536 is
// 70000 6 65537. A model whose vocabulary is smaller than the tokenizer's is refused.
TEST_F(PrepareShardsTest, LargeVocabulariesGetUint32ShardsAndTooSmallAModelIsRefused) {
  const auto r = prepare("wide", "--tokenizer tok/wide --val-fraction 0.34 wide.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(magic("wide", "train"), bitqat::data::kShard32Magic);
  EXPECT_EQ(tokens("wide", "train"), (V{70000, 6}));
  EXPECT_EQ(tokens("wide", "val"), (V{65537}));
  EXPECT_EQ(manifest("wide")["layout"]["token_dtype"], "uint32");
  const auto cfg = bitqat::training::Config::load_string(
      fmt::format("model: {{kind: lm, vocab_size: 320, dim: 32, n_layers: 1, n_heads: 2, max_seq_len: 8}}\n"
                  "data: {{kind: shards, train: {0}/out/wide/wide_train_*.bin, val: {0}/out/wide/wide_val_*.bin, "
                  "vocab_size: 70001, seq_len: 1}}\n",
                  dir_.string()),
      "wide.yaml");
  try {
    bitqat::training::make_task(cfg, at::Device(at::kCPU));
    FAIL() << "expected an error";
  } catch (const bitqat::core::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "wide.yaml:1: model.vocab_size = 320: expected at least the data's vocabulary of 70001");
  }
}

// GPT-2 byte-level BPE from GGUF metadata: "abc ab a" pre-tokenizes to abc, \u0120ab, \u0120a; merges
// a+b then ab+c give abc (7); \u0120ab has no \u0120+ab merge: \u0120 (4) ab (5); \u0120+a gives 6.
TEST_F(PrepareShardsTest, GgufTokenizer) {
  const auto r = prepare("bpe", "--tokenizer tok/tok.gguf --val-fraction 0.25 bpe.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(tokens("bpe", "train"), (V{7, 4, 5}));
  EXPECT_EQ(tokens("bpe", "val"), (V{6}));
  EXPECT_NE(r.out.find("no special token is added: documents follow each other directly"), std::string::npos) << r.out;
  EXPECT_EQ(manifest("bpe")["tokenizer"]["kind"], "gguf");
}

TEST_F(PrepareShardsTest, BadArgumentsExitWithStatus2AndSayWhy) {
  auto r = prepare("bad", "--tokenizer tok/nothing --val-fraction 0.1 doc1.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--tokenizer tok/nothing: no such file or directory"), std::string::npos) << r.out;
  r = prepare("bad", "--tokenizer doc2.txt --val-fraction 0.1 doc1.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--tokenizer doc2.txt: not a GGUF file (magic) and not a directory"), std::string::npos)
      << r.out;
  r = prepare("bad", "--tokenizer tok/words --val-fraction 1.5 doc1.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--val-fraction 1.5: expected a number in (0, 1)"), std::string::npos) << r.out;
  r = prepare("bad", "--tokenizer tok/words --val-fraction 0.1 --val doc2.txt doc1.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("give exactly one of --val-fraction F or --val FILE"), std::string::npos) << r.out;
  r = prepare("bad", "--tokenizer tok/words --val-fraction 0.1 missing.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("missing.txt: no such file"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "out" / "bad"));
}
