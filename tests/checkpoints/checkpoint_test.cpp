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

// The step is recorded three times: directory name, manifest.json and state.json. Every field the
// reader uses must have its type; a wrong one is an error naming the file and the value, never an
// internal error.
TEST_F(CheckpointTest, ManifestAndStateFieldsOfTheWrongTypeOrValueAreRefused) {
  const auto ck = write_checkpoint(dir_, data(16), 0);
  const std::string mpath = ck + "/manifest.json";
  const auto manifest = nlohmann::json::parse(bitqat::core::read_file(mpath));
  auto with_step = [&](const nlohmann::json& step) {
    auto m = manifest;
    m["step"] = step;
    bitqat::core::write_file_atomic(mpath, m.dump(2));
    return error_of(ck);
  };
  EXPECT_EQ(with_step(int64_t{1} << 40), mpath + ": step = 1099511627776: expected an integer in [0, 99999999]");
  EXPECT_EQ(with_step(-3), mpath + ": step = -3: expected an integer in [0, 99999999]");
  EXPECT_EQ(with_step("16"), mpath + ": step = \"16\": expected an integer in [0, 99999999]");
  EXPECT_EQ(with_step(17), mpath +
                               ": step = 17 disagrees with the directory name step_00000016: the checkpoint was "
                               "tampered with or copied into the wrong place");
  EXPECT_EQ(with_step(16), "");

  // state.json: its own step must agree, and it must be an object.
  const std::string spath = ck + "/state.json";
  auto with_state = [&](const std::string& text) {
    bitqat::core::write_file_atomic(spath, text);
    auto m = manifest;
    m["files"]["state.json"] = {{"size", text.size()}, {"crc32", bitqat::core::crc32(text.data(), text.size())}};
    bitqat::core::write_file_atomic(mpath, m.dump(2));
    return error_of(ck);
  };
  EXPECT_EQ(with_state(R"({"step": 15, "config_hash": "abc"})"),
            spath + ": step = 15 disagrees with manifest.json's step = 16");
  EXPECT_EQ(with_state("[16]"), spath + ": not a JSON object");
  EXPECT_EQ(with_state(R"({"step": "sixteen"})"), spath + ": step = \"sixteen\": expected an integer in [0, 99999999]");
  EXPECT_EQ(with_state(R"({"step": 16})"), "");

  // A file table entry of the wrong type.
  auto m = manifest;
  m["files"]["state.json"] = {{"size", "12"}, {"crc32", 0}};
  bitqat::core::write_file_atomic(mpath, m.dump(2));
  EXPECT_EQ(error_of(ck),
            mpath + " (files.state.json): size = \"12\": expected an integer in [0, 9223372036854775807]");
  m["files"] = "none";
  bitqat::core::write_file_atomic(mpath, m.dump(2));
  EXPECT_EQ(error_of(ck), mpath + ": 'files' is missing or not an object");
}

namespace {

// A sharded checkpoint: the ranks' optimizer files, written into the directory begin_checkpoint made,
// are listed in the manifest and read back by rank; a missing, extra-altered or unlisted shard is
// refused naming the file.
TEST_F(CheckpointTest, ShardedOptimizerStateIsOneFilePerRankInTheManifest) {
  auto d = data(4);
  d.optimizer.clear();
  const std::string tmp = begin_checkpoint(dir_, 4);
  EXPECT_EQ(fs::path(tmp).filename().string(), ".tmp-step_00000004");
  for (int r = 0; r < 2; ++r) {
    d.optimizer_shard_files.push_back(write_checkpoint_shard(
        tmp, r, 2, {{"step", at::tensor({int64_t{4}}, at::kLong)}, {"w.exp_avg", at::full({16}, 1.0f + r)}}));
  }
  EXPECT_EQ(d.optimizer_shard_files[1].name, "optimizer-rank00001-of-00002.safetensors");
  const auto path = write_checkpoint(dir_, d, 0);
  EXPECT_FALSE(fs::exists(path + "/optimizer.safetensors"));
  EXPECT_FALSE(fs::exists(tmp));
  const auto back = read_checkpoint(path);
  EXPECT_TRUE(back.optimizer.empty());
  ASSERT_EQ(back.optimizer_shards.size(), 2u);
  EXPECT_EQ(back.optimizer_shards[1][1].first, "w.exp_avg");
  EXPECT_TRUE(at::equal(back.optimizer_shards[1][1].second, at::full({16}, 2.0f)));
  EXPECT_TRUE(at::equal(back.model[0].second, d.model[0].second));

  // One byte of rank 1's file changed: its CRC no longer matches.
  const auto shard1 = path + "/optimizer-rank00001-of-00002.safetensors";
  {
    std::fstream f(shard1, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard1) - 1));
    f.put('\x7f');
  }
  EXPECT_NE(error_of(path).find("optimizer-rank00001-of-00002.safetensors"), std::string::npos) << error_of(path);
  fs::remove(shard1);
  EXPECT_NE(error_of(path).find("optimizer-rank00001-of-00002.safetensors"), std::string::npos) << error_of(path);
}

TEST_F(CheckpointTest, AShardTheRanksDidNotWriteIsNoCheckpoint) {
  auto d = data(2);
  begin_checkpoint(dir_, 2);
  d.optimizer_shard_files.push_back({"optimizer-rank00000-of-00001.safetensors", 100, 0});
  try {
    write_checkpoint(dir_, d, 0);
    FAIL() << "a missing shard file was accepted";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer-rank00000-of-00001.safetensors is missing"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(find_latest_checkpoint(dir_).has_value());
}

}  // namespace
