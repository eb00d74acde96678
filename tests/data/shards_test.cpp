#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "data/source.hpp"
#include "tests/data/test_util.hpp"

namespace fs = std::filesystem;
using bitqat::data::testing::DataTest;
using namespace bitqat::data;

namespace {

std::vector<uint16_t> ramp_tokens(size_t n, uint16_t mod) {
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint16_t>(i % mod);
  return t;
}

}  // namespace

TEST_F(DataTest, ShardRoundTripAndLayout) {
  const auto toks = ramp_tokens(3000, 1000);
  const auto p = (dir_ / "s.bin").string();
  write_shard(p, toks);
  EXPECT_EQ(read_shard(p), toks);
  EXPECT_EQ(fs::file_size(p), 1024u + 2 * 3000);
  // llm.c's layout: little-endian int32 magic, version, count; tokens from byte 1024.
  const std::string b = bitqat::core::read_file(p);
  int32_t header[3];
  std::memcpy(header, b.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 3000);
  uint16_t t2 = 0;
  std::memcpy(&t2, b.data() + 1024 + 2 * 2, 2);
  EXPECT_EQ(t2, 2);
  // An empty shard is valid.
  write_shard(p, {});
  EXPECT_TRUE(read_shard(p).empty());
  EXPECT_EQ(fs::file_size(p), 1024u);
}

TEST_F(DataTest, ShardHeaderErrorsNameFileAndValues) {
  const auto good_path = (dir_ / "good.bin").string();
  write_shard(good_path, ramp_tokens(3000, 1000));
  const std::string good = bitqat::core::read_file(good_path);
  const auto p = (dir_ / "bad.bin").string();
  auto error_of = [&](const std::string& bytes) -> std::string {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    try {
      read_shard(p);
    } catch (const bitqat::core::UserError& e) {
      return e.what();
    }
    return "";
  };
  std::string bad_magic = good;
  bad_magic[0] = 1;
  bad_magic[1] = bad_magic[2] = bad_magic[3] = 0;
  EXPECT_EQ(error_of(bad_magic), p + ": magic number 1 is not an llm.c token shard (expected 20240520 for uint16 "
                                     "tokens or 20240801 for uint32 tokens)");
  std::string bad_version = good;
  bad_version[4] = 7;
  EXPECT_EQ(error_of(bad_version), p + ": shard version 7 is not supported (expected 1: uint16 tokens)");
  EXPECT_EQ(error_of(good.substr(0, good.size() - 2)),
            p + ": header says 3000 tokens (7024 bytes with the header), the file has 7022 bytes");
  EXPECT_EQ(error_of(good + "xx"),
            p + ": header says 3000 tokens (7024 bytes with the header), the file has 7026 bytes");
  EXPECT_EQ(error_of(good.substr(0, 100)), p + ": 100 bytes is shorter than the 1024-byte llm.c shard header");
  EXPECT_THROW(read_shard((dir_ / "missing.bin").string()), bitqat::core::UserError);
}

// llm.c's uint32 layout (dev/data/data_common.py, "llama-3"): magic 20240801, version 7, 4-byte tokens.
TEST_F(DataTest, Uint32ShardsForLargeVocabularies) {
  const std::vector<uint32_t> toks = {0, 65535, 65536, 70000, 128255, 3};
  const auto p = (dir_ / "wide.bin").string();
  write_shard32(p, toks);
  EXPECT_EQ(fs::file_size(p), 1024u + 4 * toks.size());
  const std::string b = bitqat::core::read_file(p);
  int32_t header[3];
  std::memcpy(header, b.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240801);
  EXPECT_EQ(header[1], 7);
  EXPECT_EQ(header[2], 6);
  uint32_t t3 = 0;
  std::memcpy(&t3, b.data() + 1024 + 4 * 3, 4);
  EXPECT_EQ(t3, 70000u);
  EXPECT_EQ(read_shard_tokens(p), toks);
  EXPECT_EQ(read_shard_count(p), 6);
  // The uint16 reader says what the file is; a uint16 shard reads as uint32 tokens unchanged.
  try {
    read_shard(p);
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_EQ(std::string(e.what()), p + ": holds uint32 tokens (magic 20240801); expected a uint16 shard");
  }
  const auto q = (dir_ / "narrow.bin").string();
  write_shard(q, {7, 65535, 0});
  EXPECT_EQ(read_shard_tokens(q), (std::vector<uint32_t>{7, 65535, 0}));
  // A wrong version or size for the uint32 layout.
  std::string bad = b;
  bad[4] = 1;
  bitqat::core::write_file_atomic(p, bad);
  EXPECT_THROW(read_shard_tokens(p), bitqat::core::UserError);
  bitqat::core::write_file_atomic(p, b.substr(0, b.size() - 2));
  try {
    read_shard_tokens(p);
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              p + ": header says 6 tokens (1048 bytes with the header), the file has 1046 bytes");
  }
}

// A shard source over uint32 shards: tokens above 65,535 reach the batches, and a token at or above
// data.vocab_size is refused naming the file and the key.
TEST_F(DataTest, ShardSourceReadsUint32Tokens) {
  std::vector<uint32_t> toks(4000);
  // Odd positions hold tokens above 65,535, so every window of a batch reaches past uint16.
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint32_t>(i % 2 == 1 ? 65536 + i / 2 : 60000 + i);
  write_shard32((dir_ / "w_000.bin").string(), toks);
  const auto doc = bitqat::core::Node::load_string(
      fmt::format("kind: shards\ntrain: {}/w_*.bin\nvocab_size: 70000\nseq_len: 16\nval_fraction: 0.1\n",
                  dir_.string()),
      "d.yaml");
  const auto src = make_source(DataConfig::from_yaml(doc), 1);
  EXPECT_EQ(src->vocab_size(), 70000);
  const auto b = src->train_batch(0, 0, 0, 1, 4, 1);
  EXPECT_GE(b.inputs.min().item<int64_t>(), 60000);
  EXPECT_GT(b.inputs.max().item<int64_t>(), 65535);
  const auto small = bitqat::core::Node::load_string(
      fmt::format("kind: shards\ntrain: {}/w_*.bin\nvocab_size: 65536\nseq_len: 16\nval_fraction: 0.1\n",
                  dir_.string()),
      "d.yaml");
  try {
    make_source(DataConfig::from_yaml(small), 1);
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("w_000.bin: token 65536 at position 1 is >= data.vocab_size = 65536"),
              std::string::npos)
        << e.what();
  }
}
