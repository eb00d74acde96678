// tools/dispatch_table.py: the checked-in cuda/dispatch_table.inc is the table of the newest results
// files in bench/results/; the winners and M ranges of a results file worked out by hand; a bad
// results file named with its key.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "core/fs.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;
using bitqat::testing::run_command;

namespace {

std::string tool() { return fmt::format("'{}' '{}/tools/dispatch_table.py'", BITQAT_PYTHON, BITQAT_SOURCE_DIR); }

}  // namespace

TEST(DispatchTable, TheCheckedInTableIsTheNewestResults) {
  const auto r = run_command(tool() + " --check");
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST(DispatchTable, WinnersAndRangesOfTheNewestResultsPerDevice) {
  const auto dir = fs::temp_directory_path() / ("bitqat_dispatch_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // An older file of the same device: ignored.
  bitqat::core::write_file_atomic((dir / "a-2026-01-01.json").string(),
                                  R"({"device": "Test GPU", "date": "2026-01-01", "candidates": [
           {"M": 1, "N": 64, "K": 128, "kernel": "mma", "splits": 1, "us": 1.0}]})");
  // The newest: at M = 1 cuBLAS is fastest, so per-group takes the next (gemv_fused x 4); at M = 16
  // gemv_tiled x 2 wins (a tie with mma goes to the first listed); at M = 512 mma_small x 1.
  bitqat::core::write_file_atomic((dir / "a-2026-02-01.json").string(),
                                  R"({"device": "Test GPU", "date": "2026-02-01", "commit": "abc", "candidates": [
           {"M": 1, "N": 64, "K": 128, "kernel": "gemv_column", "splits": 1, "us": 9.0},
           {"M": 1, "N": 64, "K": 128, "kernel": "cublas_int8", "splits": 1, "us": 2.0},
           {"M": 1, "N": 64, "K": 128, "kernel": "gemv_fused", "splits": 4, "us": 3.0},
           {"M": 16, "N": 64, "K": 128, "kernel": "gemv_tiled", "splits": 2, "us": 5.0},
           {"M": 16, "N": 64, "K": 128, "kernel": "mma", "splits": 1, "us": 5.0},
           {"M": 512, "N": 64, "K": 128, "kernel": "mma_small", "splits": 1, "us": 7.0},
           {"M": 512, "N": 64, "K": 128, "kernel": "mma", "splits": 2, "us": 8.0}]})");
  bitqat::core::write_file_atomic((dir / "b-2026-01-05.json").string(),
                                  R"({"device": "Other GPU", "date": "2026-01-05", "candidates": [
           {"M": 4, "N": 8, "K": 64, "kernel": "mma_pipelined", "splits": 4, "us": 1.5}]})");
  const auto out = (dir / "table.inc").string();
  auto r = run_command(fmt::format("{} --results '{}' --out '{}'", tool(), dir.string(), out));
  ASSERT_EQ(r.code, 0) << r.out;
  const auto text = bitqat::core::read_file(out);
  EXPECT_NE(text.find("{\"Other GPU\", 1, int64_t{1} << 62, 8, 64, \"mma_pipelined\", 4, \"mma_pipelined\", 4},\n"
                      "{\"Test GPU\", 1, 1, 64, 128, \"cublas_int8\", 1, \"gemv_fused\", 4},\n"
                      "{\"Test GPU\", 2, 16, 64, 128, \"gemv_tiled\", 2, \"gemv_tiled\", 2},\n"
                      "{\"Test GPU\", 17, int64_t{1} << 62, 64, 128, \"mma_small\", 1, \"mma_small\", 1},\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("(commit abc)"), std::string::npos) << text;
  // A candidate without its time: named with the file and the key, nothing written.
  bitqat::core::write_file_atomic((dir / "c-2026-03-01.json").string(),
                                  R"({"device": "Test GPU", "date": "2026-03-01", "candidates": [
           {"M": 1, "N": 64, "K": 128, "kernel": "mma", "splits": 1}]})");
  r = run_command(fmt::format("{} --results '{}' --out '{}'", tool(), dir.string(), out));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("c-2026-03-01.json: candidates[0] key 'us' missing or of the wrong type"), std::string::npos)
      << r.out;
  EXPECT_EQ(bitqat::core::read_file(out), text);
  fs::remove_all(dir);
}
