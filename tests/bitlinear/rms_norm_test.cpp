#include "bitlinear/rms_norm.hpp"

#include <gtest/gtest.h>

#include <cmath>

using namespace bitqat::bitlinear;

TEST(RMSNorm, HandComputedValuesAndWeight) {
  RMSNorm norm(2, /*eps=*/0.0);
  // x = [3, 4]: mean(x^2) = 12.5, rms = 3.5355339; weight [2, 0.5].
  {
    at::NoGradGuard g;
    norm->weight.copy_(at::tensor({2.0f, 0.5f}));
  }
  const auto y = norm->forward(at::tensor({3.0f, 4.0f, -1.0f, 0.0f}).reshape({2, 2}));
  const float r0 = std::sqrt(12.5f);
  const float r1 = std::sqrt(0.5f);
  EXPECT_NEAR(y[0][0].item<float>(), 2.0f * 3.0f / r0, 1e-6);
  EXPECT_NEAR(y[0][1].item<float>(), 0.5f * 4.0f / r0, 1e-6);
  EXPECT_NEAR(y[1][0].item<float>(), 2.0f * -1.0f / r1, 1e-6);
  EXPECT_EQ(y[1][1].item<float>(), 0.0f);
}

TEST(RMSNorm, ZeroRowStaysFiniteAndBf16KeepsItsDtype) {
  RMSNorm norm(4);
  const auto z = norm->forward(at::zeros({1, 4}));
  EXPECT_TRUE(z.eq(0).all().item<bool>());
  at::manual_seed(12);
  const auto x = at::randn({3, 4});
  const auto yb = norm->forward(x.to(at::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(yb.to(at::kFloat).allclose(norm->forward(x), 2e-2, 2e-2));
}

TEST(RMSNorm, GradientReachesTheWeight) {
  RMSNorm norm(3, 0.0);
  const auto x = at::tensor({1.0f, 2.0f, 2.0f}).reshape({1, 3});  // rms = sqrt(3)
  norm->forward(x).sum().backward();
  // d/dw_i sum(x_i / rms * w_i) = x_i / rms.
  EXPECT_TRUE(norm->weight.grad().allclose(x.reshape({3}) / std::sqrt(3.0f), 1e-6, 1e-6));
}
