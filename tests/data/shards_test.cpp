#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

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
  EXPECT_EQ(error_of(bad_magic), p + ": magic number 1 is not an llm.c token shard (expected 20240520)");
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
