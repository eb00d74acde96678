// Test helper: whether the tests that run our files in llama.cpp itself (through the pinned
// llama-cpp-python that `launch/setup.sh --tests` installs) can run here.
//
// A machine set up without --tests has no llama-cpp-python: those tests are skipped with a message
// saying how to get it. Where it is installed they run, and a broken install (the package present but
// its llama.cpp libraries failing to load) fails them. BITQAT_REQUIRE_LLAMA_CPP=1 (set by .ci/run)
// turns the skip into a failure, so that CI cannot pass without running them.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "tests/command.hpp"

namespace bitqat::testing {

// Why the llama.cpp tests cannot run ("" when they can). `python` is the configured interpreter
// (BITQAT_PYTHON, empty when CMake found none). The answer is computed once per process.
inline std::string llama_cpp_missing(const std::string& python) {
  static const std::optional<std::string> why = [&]() -> std::optional<std::string> {
    if (python.empty()) return "no Python configured (cmake -DPython3_EXECUTABLE=...)";
    // find_spec locates the package without importing it: a package that is present but does not load
    // is not "missing", and the test itself then fails with the import error.
    const auto r = run_command(python +
                               " -c \"import importlib.util, sys; "
                               "sys.exit(0 if importlib.util.find_spec('llama_cpp') else 3)\"");
    if (r.code == 0) return std::nullopt;
    if (r.code == 3) return "llama-cpp-python is not installed in " + python + ": launch/setup.sh --tests installs it";
    return "could not run " + python + " (exit " + std::to_string(r.code) + "): " + r.out;
  }();
  return why.value_or("");
}

}  // namespace bitqat::testing

// Skips the current test when llama.cpp is missing, or fails it under BITQAT_REQUIRE_LLAMA_CPP=1.
#define BITQAT_REQUIRE_LLAMA_CPP_OR_SKIP(python)                                                  \
  do {                                                                                            \
    const std::string bitqat_why_ = ::bitqat::testing::llama_cpp_missing(python);                 \
    if (!bitqat_why_.empty()) {                                                                   \
      const char* bitqat_req_ = std::getenv("BITQAT_REQUIRE_LLAMA_CPP");                          \
      if (bitqat_req_ && std::string(bitqat_req_) == "1")                                         \
        FAIL() << bitqat_why_ << " (BITQAT_REQUIRE_LLAMA_CPP=1 makes this a failure)";             \
      GTEST_SKIP() << bitqat_why_;                                                                \
    }                                                                                             \
  } while (0)
