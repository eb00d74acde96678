// Every shipped config parses and validates (the shards of the GPU and SmolLM2 configs, which a setup
// step prepares, are replaced by temporary ones).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/fs.hpp"
#include "data/source.hpp"
#include "core/error.hpp"
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

// A diffusion transformer generates the data's images: its shape and classes must be the data's.
TEST(DiTConfig, MustMatchTheImageData) {
  auto err = [](const std::string& model, const std::string& data) {
    try {
      bitqat::training::Config::load_string("model: " + model + "\ndata: " + data + "\n", "d.yaml");
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(err("{kind: dit}", "{kind: fashion_mnist}"), "(no error)");
  EXPECT_EQ(err("{kind: dit, channels: 3}", "{kind: fashion_mnist}"),
            "d.yaml:1: model.channels = 3: data.kind fashion_mnist has images of 1 x 28 x 28 (channels x height x width)");
  EXPECT_EQ(err("{kind: dit, height: 32, width: 32}", "{kind: fashion_mnist}"),
            "d.yaml:1: model.height = 32: data.kind fashion_mnist has images of 1 x 28 x 28 (channels x height x width)");
  EXPECT_EQ(err("{kind: dit, num_classes: 12}", "{kind: fashion_mnist}"),
            "d.yaml:1: model.num_classes = 12: expected the data's 10 classes");
  EXPECT_NE(err("{kind: dit}", "{kind: text, path: " + std::string(BITQAT_SOURCE_DIR) + "/README.md}")
                .find("model.kind = dit: a diffusion transformer needs image data, got data.kind text"),
            std::string::npos);
}
