// The language model's CPU kernels (models/cpu/lm_kernels.hpp): every instruction-set variant this
// CPU runs gives the bits of the scalar formulas, computed here one float operation at a time.
#include "models/cpu/lm_kernels.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/cpu_isa.hpp"
#include "tests/cpu_kernels.hpp"

using bitqat::models::cpu::lm_kernels_for;
using bitqat::models::cpu::LmKernels;

namespace {

std::vector<const LmKernels*> variants() { return bitqat::testing::cpu_variants(&lm_kernels_for); }

using bitqat::testing::randn;
using bitqat::testing::same_bits;

}  // namespace

TEST(LmKernels, TheVariantInUseIsOneThisCpuRuns) {
  const auto v = variants();
  ASSERT_FALSE(v.empty());
  EXPECT_STREQ(v[0]->isa, "default");
  bool listed = false;
  for (const auto* k : v) listed = listed || k == &bitqat::models::cpu::lm_kernels();
  EXPECT_TRUE(listed);
}

// relu(u)^2 and its backward g (relu(u) + relu(u)): relu keeps NaN of either sign and maps
// negatives and -0 to +0 (so relu^2 of -0 is +0, as at::relu(u)^2 gives).
TEST(LmKernels, ReluSquaredEqualsTheScalarDefinition) {
  for (const int64_t n : {1, 15, 16, 17, 1000}) {
    auto u = randn(static_cast<size_t>(n), static_cast<uint32_t>(n), 1.5f);
    const auto g = randn(static_cast<size_t>(n), 6, 1.0f);
    u[0] = -0.0f;
    if (n > 2) {
      u[1] = std::numeric_limits<float>::quiet_NaN();
      u[2] = -std::numeric_limits<float>::quiet_NaN();
    }
    std::vector<float> want(u.size()), want_d(u.size());
    for (size_t i = 0; i < u.size(); ++i) {
      const float r = std::isnan(u[i]) ? u[i] : (u[i] > 0.0f ? u[i] : 0.0f);
      want[i] = r * r;
      want_d[i] = g[i] * (r + r);
    }
    EXPECT_FALSE(std::signbit(want[0]));
    for (const auto* k : variants()) {
      std::vector<float> a(u.size(), 42.0f), d(u.size(), 42.0f);
      k->relu_squared(u.data(), nullptr, a.data(), 0, n);
      k->relu_squared(u.data(), g.data(), d.data(), 0, n);
      EXPECT_TRUE(same_bits(a.data(), want.data(), a.size())) << k->isa << " n " << n;
      EXPECT_TRUE(same_bits(d.data(), want_d.data(), d.size())) << k->isa << " n " << n;
      EXPECT_FALSE(std::signbit(a[0])) << k->isa << ": relu(-0)^2 must be +0";
      if (n > 2) {
        EXPECT_TRUE(std::isnan(a[1]) && std::isnan(a[2]) && std::isnan(d[1])) << k->isa;
      }
      // [begin, end): elements outside are not written.
      std::vector<float> part(u.size(), 42.0f);
      k->relu_squared(u.data(), nullptr, part.data(), n / 2, n);
      for (int64_t i = 0; i < n / 2; ++i) EXPECT_EQ(part[static_cast<size_t>(i)], 42.0f) << k->isa;
    }
  }
}

// RoPE rows: every variant gives the scalar formula's bits (one rounding per product and per sum, no
// fused multiply-add), forward and backward, for head sizes with and without a vector remainder.
TEST(LmKernels, RopeRowsEqualTheScalarRotation) {
  for (const int64_t d : {2, 32, 40}) {
    const int64_t t = 5, h = 3, rows = 2 * t, half = d / 2;
    const auto x = randn(static_cast<size_t>(rows * h * d), static_cast<uint32_t>(d), 2.0f);
    const auto c = randn(static_cast<size_t>(t * d), 1, 1.0f);
    const auto sn = randn(static_cast<size_t>(t * d), 2, 1.0f);
    for (const bool backward : {false, true}) {
      std::vector<float> want(x.size());
      for (int64_t r = 0; r < rows; ++r) {
        const float* cr = c.data() + (r % t) * d;
        const float* sr = sn.data() + (r % t) * d;
        for (int64_t i = 0; i < h; ++i) {
          const float* xr = x.data() + (r * h + i) * d;
          float* y = want.data() + (r * h + i) * d;
          for (int64_t j = 0; j < half; ++j) {
            volatile float a = xr[j] * cr[j], b = backward ? xr[j + half] * sr[j + half] : (-xr[j + half]) * sr[j];
            y[j] = a + b;
            volatile float e = xr[j + half] * cr[j + half], f = backward ? (-xr[j]) * sr[j] : xr[j] * sr[j + half];
            y[j + half] = e + f;
          }
        }
      }
      for (const auto* k : variants()) {
        std::vector<float> got(x.size(), 42.0f);
        k->rope_rows(x.data(), c.data(), sn.data(), t, h, d, backward, got.data(), 0, rows);
        EXPECT_TRUE(same_bits(got.data(), want.data(), got.size())) << k->isa << " d " << d << " bw " << backward;
      }
    }
  }
}
