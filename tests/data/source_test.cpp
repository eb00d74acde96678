#include "data/source.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace fs = std::filesystem;
using namespace bitqat::data;
using bitqat::core::Node;

namespace {

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bitqat_data_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  DataConfig cfg(const std::string& yaml) { return DataConfig::from_yaml(Node::load_string(yaml, "d.yaml").child("data")); }
  std::string err(const std::string& yaml) {
    try {
      auto c = cfg(yaml);
      make_source(c, 1);
    } catch (const bitqat::core::UserError& e) {
      return e.what();
    }
    return "";
  }
  std::string text_file(size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>('a' + (i * 7 + i / 13) % 26));
    const auto p = (dir_ / "t.txt").string();
    bitqat::core::write_file_atomic(p, s);
    return p;
  }
  fs::path dir_;
};

}  // namespace

TEST_F(DataTest, TextBatchesAreDeterministicShiftedAndSplitAcrossRanks) {
  const auto path = text_file(5000);
  const auto src = make_source(cfg("data: {kind: text, path: " + path + ", seq_len: 16, val_fraction: 0.1}"), 42);
  EXPECT_EQ(src->vocab_size(), 256);
  EXPECT_EQ(src->train_size(), 4500);
  const auto a = src->train_batch(3, 0, 0, 1, 8, 1);
  EXPECT_EQ(a.inputs.sizes(), (std::vector<int64_t>{8, 16}));
  EXPECT_TRUE(a.inputs.equal(src->train_batch(3, 0, 0, 1, 8, 1).inputs));
  EXPECT_FALSE(a.inputs.equal(src->train_batch(4, 0, 0, 1, 8, 1).inputs));
  EXPECT_TRUE(a.inputs.narrow(1, 1, 15).equal(a.targets.narrow(1, 0, 15)));
  // The bytes are the file's: every row is a window of the text.
  const std::string text = bitqat::core::read_file(path);
  for (int64_t r = 0; r < 8; ++r) {
    std::string row;
    for (int64_t t = 0; t < 16; ++t) row.push_back(static_cast<char>(a.inputs[r][t].item<int64_t>()));
    EXPECT_NE(text.substr(0, 4500).find(row), std::string::npos);
  }
  // 2 ranks x 2 micro-steps x 2 rows = the same 8 rows as 1 rank x 1 micro-step x 8 rows, disjointly.
  std::vector<at::Tensor> parts;
  for (int micro = 0; micro < 2; ++micro) {
    for (int rank = 0; rank < 2; ++rank) parts.push_back(src->train_batch(3, micro, rank, 2, 2, 2).inputs);
  }
  EXPECT_TRUE(at::cat(parts).equal(a.inputs));
  const auto val = src->val_batches(4, 3);
  ASSERT_EQ(val.size(), 3u);
  EXPECT_TRUE(val[0].inputs.equal(src->val_batches(4, 3)[0].inputs));
  EXPECT_EQ(static_cast<char>(val[0].inputs[0][0].item<int64_t>()), text[4500]);  // the tail is validation
}

TEST_F(DataTest, TextErrors) {
  const auto path = text_file(20);
  EXPECT_NE(err("data: {kind: text, path: " + path + ", seq_len: 64}").find("fewer than data.seq_len + 1 = 65"),
            std::string::npos);
  EXPECT_EQ(err("data: {kind: text, path: /nonexistent.txt}"), "d.yaml:1: data.path = /nonexistent.txt: file not found");
  EXPECT_EQ(err("data: {kind: text, path: x, dir: y}"), "d.yaml:1: data.dir: key 'dir' does not apply to data.kind = text");
  EXPECT_EQ(err("data: {kind: csv}"), "d.yaml:1: data.kind = csv: expected one of fashion_mnist|shards|text");
}

TEST_F(DataTest, ShardsRoundTripAndErrors) {
  std::vector<uint16_t> toks(3000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint16_t>(i % 1000);
  const auto s0 = (dir_ / "train_000.bin").string();
  write_shard(s0, toks);
  EXPECT_EQ(read_shard(s0), toks);
  EXPECT_EQ(fs::file_size(s0), 1024u + 2 * 3000);
  write_shard((dir_ / "train_001.bin").string(), toks);
  const auto src = make_source(cfg("data: {kind: shards, train: '" + (dir_ / "train_*.bin").string() +
                                   "', vocab_size: 1000, seq_len: 32}"), 1);
  EXPECT_EQ(src->vocab_size(), 1000);
  EXPECT_EQ(src->train_size() + 300, 6000);  // 5% of 6000 tokens held out
  EXPECT_LT(src->train_batch(0, 0, 0, 1, 4, 1).inputs.max().item<int64_t>(), 1000);

  auto expect_error = [&](const std::string& bytes, const std::string& what) {
    const auto p = (dir_ / "bad.bin").string();
    std::ofstream(p, std::ios::binary) << bytes;
    try {
      read_shard(p);
      ADD_FAILURE() << "no error for " << what;
    } catch (const bitqat::core::UserError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
    }
  };
  std::string good = bitqat::core::read_file(s0);
  std::string bad_magic = good;
  bad_magic[0] = 1;
  expect_error(bad_magic, "is not an llm.c token shard (expected 20240520)");
  std::string bad_version = good;
  bad_version[4] = 7;
  expect_error(bad_version, "shard version 7 is not supported");
  expect_error(good.substr(0, good.size() - 2), "header says 3000 tokens (7024 bytes with the header), the file has 7022 bytes");
  expect_error(good.substr(0, 100), "shorter than the 1024-byte llm.c shard header");

  EXPECT_NE(err("data: {kind: shards, train: '" + (dir_ / "nothing_*.bin").string() + "'}").find("matched no files"),
            std::string::npos);
  EXPECT_NE(err("data: {kind: shards, train: '" + s0 + "', vocab_size: 500}").find("token 500 at position 500 is >= data.vocab_size = 500"),
            std::string::npos);
}

TEST_F(DataTest, FashionMnistFromTheDebianPackage) {
  const auto src = make_source(cfg("data: {kind: fashion_mnist}"), 3);
  EXPECT_EQ(src->train_size(), 60000);
  EXPECT_EQ(src->vocab_size(), 10);
  const auto b = src->train_batch(0, 0, 0, 1, 16, 1);
  EXPECT_EQ(b.inputs.sizes(), (std::vector<int64_t>{16, 1, 28, 28}));
  EXPECT_GE(b.inputs.min().item<float>(), 0.0f);
  EXPECT_LE(b.inputs.max().item<float>(), 1.0f);
  const auto val = src->val_batches(100, 2);
  ASSERT_EQ(val.size(), 2u);
  // The first test image is an ankle boot (label 9), the second a pullover (label 2).
  EXPECT_EQ(val[0].targets[0].item<int64_t>(), 9);
  EXPECT_EQ(val[0].targets[1].item<int64_t>(), 2);
  // An epoch visits every training image once.
  const auto epoch = src->train_batch(0, 0, 0, 1, 60000, 1);
  EXPECT_EQ(std::get<0>(at::_unique(epoch.targets)).numel(), 10);
  EXPECT_EQ(at::bincount(epoch.targets).eq(6000).all().item<bool>(), true);
  EXPECT_NE(err("data: {kind: fashion_mnist, dir: /nonexistent}").find("install the dataset-fashion-mnist package"),
            std::string::npos);
}
