// The one definition of every code (cuda/quant_codes.hpp): rounding, scales, codes and the canonical
// summation order, each checked against values worked out by hand.
#include "cuda/quant_codes.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

using namespace bitqat::cuda;

TEST(QuantCodes, RoundHalfAwayIsExactAtEveryTie) {
  EXPECT_EQ(round_half_away(0.5f), 1.0f);
  EXPECT_EQ(round_half_away(-0.5f), -1.0f);
  EXPECT_EQ(round_half_away(2.5f), 3.0f);  // away from zero, not to even
  EXPECT_EQ(round_half_away(-2.5f), -3.0f);
  EXPECT_EQ(round_half_away(1.4999999f), 1.0f);
  // The largest float below 0.5: floor(x + 0.5) would give 1, because x + 0.5 rounds up to 1.0f.
  const float below_half = std::nextafter(0.5f, 0.0f);
  EXPECT_EQ(round_half_away(below_half), 0.0f);
  EXPECT_EQ(round_half_away(-below_half), -0.0f);
  EXPECT_EQ(round_half_away(0.49999999999999994), 0.0);  // double: the same case
}

TEST(QuantCodes, ActivationScaleAndCodesByHand) {
  // amax 2, 8 bits: s = 127 / 2 = 63.5; x = 1 -> 63.5 -> 64 (a tie, away from zero); x = -2 -> -127.
  const float s = act_scale(2.0f, 1e-5f, act_qmax(8), true);
  EXPECT_EQ(s, 63.5f);
  EXPECT_EQ(act_code(1.0f, s, 127), 64);
  EXPECT_EQ(act_code(-2.0f, s, 127), -127);
  EXPECT_EQ(act_code(-3.0f, s, 127), -128);  // clamped at -qmax - 1
  EXPECT_EQ(act_code(5.0f, s, 127), 127);
  // 4 bits: qmax 7; a row of zeros takes the eps floor: s = 7 / 1e-5, codes 0.
  EXPECT_EQ(act_qmax(4), 7);
  EXPECT_EQ(act_scale(0.0f, 1e-5f, 7, true), 7.0f / 1e-5f);
  // A non-finite row: NaN scale, code 0.
  EXPECT_TRUE(std::isnan(act_scale(1.0f, 1e-5f, 127, false)));
  EXPECT_EQ(act_code(1.0f, std::numeric_limits<float>::quiet_NaN(), 127), 0);
}

TEST(QuantCodes, TernaryAndBinaryCodesByHand) {
  // gamma 0.4, eps 0.1: w / 0.5 = 2w; 0.25 -> 0.5 -> 1 (tie away), -0.2 -> -0.4 -> 0, 3 -> 6 -> clamp 1.
  EXPECT_EQ(ternary_code(0.25f, 0.4f, 0.1f), 1);
  EXPECT_EQ(ternary_code(-0.25f, 0.4f, 0.1f), -1);
  EXPECT_EQ(ternary_code(-0.2f, 0.4f, 0.1f), 0);
  EXPECT_EQ(ternary_code(3.0f, 0.4f, 0.1f), 1);
  EXPECT_EQ(ternary_code(-3.0f, 0.4f, 0.1f), -1);
  EXPECT_EQ(ternary_code(std::numeric_limits<float>::quiet_NaN(), 0.4f, 0.1f), 0);
  EXPECT_EQ(binary_code(0.3f, 0.3f), 1);  // sign(0) = +1
  EXPECT_EQ(binary_code(0.2f, 0.3f), -1);
}

TEST(QuantCodes, CanonicalSumFollowsItsStatedOrder) {
  // Terms whose sum depends on the order: 1e16 at index 0, then 255 ones, then -1e16 at index 256.
  // Lane 0 holds 1e16 + (-1e16) = 0; lanes 1..255 hold 1 each; the tree adds them exactly: 255.
  // A left-to-right sum would give 0 (each 1 is lost against 1e16, whose ulp is 2).
  const int64_t n = 257;
  std::vector<double> t(n, 1.0);
  t[0] = 1e16;
  t[256] = -1e16;
  EXPECT_EQ(canonical_sum(n, [&](int64_t i) { return t[static_cast<size_t>(i)]; }), 255.0);
  double left_to_right = 0.0;
  for (double v : t) left_to_right += v;
  EXPECT_EQ(left_to_right, 0.0);
  // The tree: lanes 0 and 128 meet first. With 1e16 in lane 0, 1 in lane 64 and -1e16 in lane 128:
  // (1e16 + -1e16) + 1 = 1, whereas 1e16 + 1 + -1e16 left to right gives 0.
  std::vector<double> u(129, 0.0);
  u[0] = 1e16;
  u[64] = 1.0;
  u[128] = -1e16;
  EXPECT_EQ(canonical_sum(129, [&](int64_t i) { return u[static_cast<size_t>(i)]; }), 1.0);
  EXPECT_EQ(canonical_sum(0, [](int64_t) { return 1.0; }), 0.0);
}

TEST(QuantCodes, RmsNormRowByHand) {
  // x = [3, 4]: mean(x^2) = 12.5; r = 1 / sqrt(12.5) in double, rounded to float once.
  const float x[2] = {3.0f, 4.0f};
  const float w[2] = {2.0f, 0.5f};
  float y[2];
  const float r = rms_norm_row(x, 2, w, 0.0, y);
  EXPECT_EQ(r, static_cast<float>(1.0 / std::sqrt(12.5)));
  EXPECT_EQ(y[0], (3.0f * r) * 2.0f);
  EXPECT_EQ(y[1], (4.0f * r) * 0.5f);
}

TEST(QuantCodes, ActQuantRowPadsAndFlagsNonFiniteRows) {
  const float x[3] = {1.0f, -0.5f, 0.25f};
  int8_t q[8];
  const float s = act_quant_row(x, 3, 8, 1e-5f, 127, q);
  EXPECT_EQ(s, 127.0f);
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[1], -64);  // -63.5, a tie, away from zero
  EXPECT_EQ(q[2], 32);   // 31.75
  for (int j = 3; j < 8; ++j) EXPECT_EQ(q[j], 0);
  const float bad[3] = {1.0f, std::numeric_limits<float>::infinity(), 0.0f};
  EXPECT_TRUE(std::isnan(act_quant_row(bad, 3, 3, 1e-5f, 127, q)));
  EXPECT_EQ(q[0], 0);
  const float nan_row[2] = {std::numeric_limits<float>::quiet_NaN(), 3.0f};
  EXPECT_TRUE(std::isnan(act_quant_row(nan_row, 2, 2, 1e-5f, 127, q)));
}
