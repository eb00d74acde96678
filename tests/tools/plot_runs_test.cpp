// tools/plot_runs.py: several runs' metrics.jsonl become one PNG; a malformed line is named by file
// and line. Needs matplotlib (launch/setup.sh --tests and --smollm2 install it); skips without it.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "core/fs.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;
using bitqat::testing::run_command;

TEST(PlotRuns, WritesOnePngOfSeveralRunsAndNamesBadLines) {
  const std::string python = BITQAT_PYTHON;
  ASSERT_FALSE(python.empty()) << "configure with -DPython3_EXECUTABLE=.venv/bin/python";
  if (run_command(fmt::format("'{}' -c 'import matplotlib'", python)).code != 0) {
    GTEST_SKIP() << "matplotlib is not installed (launch/setup.sh --tests installs it)";
  }
  const auto dir = fs::temp_directory_path() / ("bitqat_plot_runs_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "a");
  fs::create_directories(dir / "b");
  std::string a, b;
  for (int s = 1; s <= 20; ++s) {
    a += fmt::format(R"({{"step": {}, "loss": {}, "loss_ce": {}, "lr": 0.001, "lambda_w": {}, "lambda_a": {}}})", s,
                     5.0 - 0.1 * s, 5.1 - 0.1 * s, s / 20.0, s / 20.0) +
         "\n";
    b += fmt::format(R"({{"step": {}, "loss": {}, "lr": 0.002, "lambda_w": 1, "lambda_a": 1}})", s, 6.0 - 0.05 * s) +
         "\n";
  }
  a += R"({"step": 20, "val_loss": 3.2})"
       "\n";
  bitqat::core::write_file_atomic((dir / "a/metrics.jsonl").string(), a);
  bitqat::core::write_file_atomic((dir / "b/metrics.jsonl").string(), b);
  const auto png = (dir / "runs.png").string();
  auto r = run_command(fmt::format("'{}' '{}/tools/plot_runs.py' --out '{}' --hline 2.9:teacher '{}=with KD' '{}'",
                                   python, BITQAT_SOURCE_DIR, png, (dir / "a").string(), (dir / "b").string()));
  ASSERT_EQ(r.code, 0) << r.out;
  const auto bytes = bitqat::core::read_file(png);
  ASSERT_GT(bytes.size(), 20000u);                     // a real picture, not an empty canvas
  EXPECT_EQ(bytes.substr(0, 8), "\x89PNG\r\n\x1a\n");  // the PNG signature
  bitqat::core::write_file_atomic((dir / "b/metrics.jsonl").string(), b + "{not json\n");
  r = run_command(fmt::format("'{}' '{}/tools/plot_runs.py' --out '{}' '{}'", python, BITQAT_SOURCE_DIR, png,
                              (dir / "b").string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find((dir / "b/metrics.jsonl").string() + ":21: not a JSON object"), std::string::npos) << r.out;
  fs::remove_all(dir);
}
