// Shared fixtures of the data tests: a per-process temporary directory and config parsing.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"
#include "tests/temp_dir.hpp"

namespace bitqat::data::testing {

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = bitqat::testing::fresh_test_dir("data"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static DataConfig cfg(const std::string& yaml) {
    return DataConfig::from_yaml(core::Node::load_string(yaml, "d.yaml").child("data"));
  }
  // The message of the UserError (ConfigError included) that parsing `yaml` and making its source
  // throws; "" when nothing is thrown.
  static std::string err(const std::string& yaml) {
    try {
      make_source(cfg(yaml), 1);
    } catch (const core::UserError& e) {
      return e.what();
    }
    return "";
  }
  // n bytes of lower-case letters (not periodic with a short period).
  std::string text_file(size_t n, const std::string& name = "t.txt") const {
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>('a' + (i * 7 + i / 13) % 26));
    const auto p = (dir_ / name).string();
    core::write_file_atomic(p, s);
    return p;
  }
  std::filesystem::path dir_;
};

}  // namespace bitqat::data::testing
