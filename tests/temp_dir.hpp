// Test helper: a fresh, empty directory for the running test.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace bitqat::testing {

// <system temp>/bitqat_<prefix>_<pid>_<test name>, removed if present and created empty: one per
// process and test, so the processes ctest runs in parallel never share one. The caller removes it.
inline std::filesystem::path fresh_test_dir(const std::string& prefix) {
  const auto d =
      std::filesystem::temp_directory_path() / ("bitqat_" + prefix + "_" + std::to_string(::getpid()) + "_" +
                                                ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace bitqat::testing
