#include "training/metrics.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/error.hpp"

using bitqat::training::format_duration;
using bitqat::training::progress_line;

TEST(ProgressLine, DurationsReadAsPeopleWriteThem) {
  EXPECT_EQ(format_duration(0.0), "0s");
  EXPECT_EQ(format_duration(-5.0), "0s");
  EXPECT_EQ(format_duration(42.9), "42s");
  EXPECT_EQ(format_duration(185.0), "3m05s");     // 3 * 60 + 5
  EXPECT_EQ(format_duration(7620.0), "2h07m");    // 2 * 3600 + 7 * 60
  EXPECT_EQ(format_duration(273600.0), "3d04h");  // 3 * 86400 + 4 * 3600
}

TEST(ProgressLine, BarStepLossAndTimeLeft) {
  // 25 of 100 steps: a quarter of 30 characters, 7 filled (rounded down).
  EXPECT_EQ(progress_line(25, 100, 1.23456), "[#######.......................] 25/100 loss 1.2346");
  EXPECT_EQ(progress_line(25, 100, 1.23456, 185.0), "[#######.......................] 25/100 loss 1.2346 eta 3m05s");
  EXPECT_EQ(progress_line(100, 100, 0.5, 0.0), "[##############################] 100/100 loss 0.5000 eta 0s");
}

// A metrics line that cannot be written (a full disk: /dev/full answers every write with ENOSPC)
// stops the run with the file named, instead of training on with its record lost.
TEST(MetricsWriter, AWriteThatFailsIsAnError) {
  const auto dir = std::filesystem::temp_directory_path() / ("bitqat_metrics_full_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "metrics.jsonl").string();
  std::filesystem::create_symlink("/dev/full", path);
  bitqat::training::MetricsWriter w(path);
  try {
    w.write({{"step", 3}, {"loss", 1.5}});
    FAIL() << "a failed write was ignored";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": cannot write the metrics line of step 3: No space left on device"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}
