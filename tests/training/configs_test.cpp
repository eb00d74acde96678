// Every shipped config parses and validates (the shards of the GPU and SmolLM2 configs, which a setup
// step prepares, are replaced by temporary ones).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/fs.hpp"
#include "data/source.hpp"
#include "training/config.hpp"

namespace fs = std::filesystem;

TEST(ShippedConfigs, AllValidate) {
  const auto dir = fs::temp_directory_path() / ("bitqat_cfgs_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  bitqat::data::write_shard((dir / "s.bin").string(), std::vector<uint16_t>(5000, 7));
  int n = 0;
  for (const auto& f : bitqat::core::glob_files(std::string(BITQAT_SOURCE_DIR) + "/configs/*.yaml")) {
    std::vector<std::string> sets;
    if (f.find("lm_gpu") != std::string::npos || f.find("smollm2") != std::string::npos) {
      sets = {"data.train=" + (dir / "s.bin").string(), "data.val=" + (dir / "s.bin").string()};
    }
    EXPECT_NO_THROW(bitqat::training::Config::load_file(f, sets)) << f;
    ++n;
  }
  EXPECT_GE(n, 5);
  fs::remove_all(dir);
}
