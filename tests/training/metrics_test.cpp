#include "training/metrics.hpp"

#include <gtest/gtest.h>

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
