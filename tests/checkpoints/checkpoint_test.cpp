#include "checkpoints/checkpoint.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace fs = std::filesystem;
using namespace bitqat::checkpoints;

namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("bitqat_ckpt_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  CheckpointData data(int64_t step) {
    CheckpointData d;
    d.step = step;
    d.model = {{"w", at::full({2, 3}, static_cast<float>(step))}, {"b", at::arange(3, at::kFloat)}};
    d.optimizer = {{"step", at::tensor({step}, at::kLong)}};
    d.extra = {{"rng.cpu", at::arange(16, at::kByte)}};
    d.state = {{"step", step}, {"config_hash", "abc"}};
    return d;
  }
  std::string error_of(const std::string& dir) {
    try {
      read_checkpoint(dir);
    } catch (const bitqat::core::UserError& e) {
      return e.what();
    }
    return "";
  }
  std::string dir_;
};

}  // namespace

TEST_F(CheckpointTest, WriteFindReadAndPrune) {
  EXPECT_FALSE(find_latest_checkpoint(dir_).has_value());
  for (int64_t s : {10, 20, 30}) write_checkpoint(dir_, data(s), 2);
  EXPECT_FALSE(fs::exists(dir_ + "/step_00000010"));  // pruned: keep the last 2
  EXPECT_TRUE(fs::exists(dir_ + "/step_00000020/manifest.json"));
  const auto latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, dir_ + "/step_00000030");
  const auto d = read_checkpoint(*latest);
  EXPECT_EQ(d.step, 30);
  EXPECT_EQ(d.model[0].first, "w");
  EXPECT_TRUE(d.model[0].second.equal(at::full({2, 3}, 30.0f)));
  EXPECT_TRUE(d.extra[0].second.equal(at::arange(16, at::kByte)));
  EXPECT_EQ(d.state["config_hash"], "abc");
}

TEST_F(CheckpointTest, InterruptedWritesNeverCount) {
  write_checkpoint(dir_, data(10), 0);
  // A write killed before its manifest: a temporary directory, and a step directory without one.
  fs::create_directories(dir_ + "/.tmp-step_00000020-999");
  std::ofstream(dir_ + "/.tmp-step_00000020-999/model.safetensors") << "partial";
  fs::create_directories(dir_ + "/step_00000030");
  std::ofstream(dir_ + "/step_00000030/model.safetensors") << "partial";
  EXPECT_EQ(*find_latest_checkpoint(dir_), dir_ + "/step_00000010");
  EXPECT_NE(error_of(dir_ + "/step_00000030").find("manifest.json is missing: the checkpoint is incomplete"),
            std::string::npos);
  write_checkpoint(dir_, data(40), 0);
  EXPECT_FALSE(fs::exists(dir_ + "/.tmp-step_00000020-999"));  // leftovers are cleared
}

TEST_F(CheckpointTest, TruncatedCorruptedAndForeignCheckpointsAreRefused) {
  const auto ck = write_checkpoint(dir_, data(10), 0);
  const auto model = ck + "/model.safetensors";
  const auto bytes = bitqat::core::read_file(model);

  std::ofstream(model, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 5);
  EXPECT_NE(error_of(ck).find(fmt::format("model.safetensors is {} bytes, the manifest says {}: the checkpoint is "
                                          "truncated or corrupted",
                                          bytes.size() - 5, bytes.size())),
            std::string::npos)
      << error_of(ck);

  auto flipped = bytes;
  flipped[bytes.size() - 3] ^= 0x01;
  std::ofstream(model, std::ios::binary | std::ios::trunc) << flipped;
  EXPECT_NE(error_of(ck).find("model.safetensors has CRC-32"), std::string::npos) << error_of(ck);

  std::ofstream(model, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_EQ(error_of(ck), "");
  auto manifest = bitqat::core::read_file(ck + "/manifest.json");
  manifest.replace(manifest.find("\"version\": 1"), 12, "\"version\": 7");
  std::ofstream(ck + "/manifest.json", std::ios::trunc) << manifest;
  EXPECT_NE(error_of(ck).find("version 7 is not bitqat-checkpoint version 1"), std::string::npos) << error_of(ck);
}
