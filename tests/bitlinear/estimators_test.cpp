#include "bitlinear/estimators.hpp"

#include <gtest/gtest.h>
#include <torch/autograd.h>

using namespace bitqat::bitlinear;

namespace {

at::Tensor grad_of(const at::Tensor& out, const at::Tensor& in, const at::Tensor& upstream) {
  return torch::autograd::grad({(out * upstream).sum()}, {in})[0];
}

}  // namespace

TEST(Estimators, LambdaEndsAreExact) {
  at::manual_seed(2);
  const auto w = at::randn({4, 8}, at::kDouble);
  WeightQuantSpec ws;
  EXPECT_TRUE(fake_quantize_weight(w, ws, 0.0).equal(w));
  EXPECT_TRUE(fake_quantize_weight(w, ws, 1.0).equal(dequantize_weight(quantize_weight(w, ws))));
  const auto half = fake_quantize_weight(w, ws, 0.5);
  EXPECT_TRUE(half.allclose(w + 0.5 * (dequantize_weight(quantize_weight(w, ws)) - w), 0, 1e-15));
  ActQuantSpec as;
  EXPECT_TRUE(fake_quantize_activation(w, as, 0.0).equal(w));
  EXPECT_TRUE(fake_quantize_activation(w, as, 1.0).equal(dequantize_activation(quantize_activation(w, as))));
  ws.type = WeightQuant::kNone;
  EXPECT_TRUE(fake_quantize_weight(w, ws, 1.0).equal(w));
}

TEST(Estimators, IdentityPassesTheGradientThrough) {
  at::manual_seed(3);
  const auto w = at::randn({3, 5}, at::kDouble).requires_grad_();
  const auto up = at::randn({3, 5}, at::kDouble);
  for (double lambda : {0.0, 0.3, 1.0}) {
    EXPECT_TRUE(grad_of(fake_quantize_weight(w, WeightQuantSpec{}, lambda), w, up).equal(up));
    EXPECT_TRUE(grad_of(fake_quantize_activation(w, ActQuantSpec{}, lambda), w, up).equal(up));
  }
}

TEST(Estimators, ClippedZeroesExactlyBeyondTheClip) {
  // Per tensor gamma = (0.1 + 2 + 3 + 0.5) / 4 = 1.4; |w| / gamma = 0.071, 1.43, 2.14, 0.357.
  const auto w = at::tensor({0.1, 2.0, -3.0, 0.5}, at::kDouble).reshape({1, 4}).requires_grad_();
  const auto up = at::tensor({1.0, 2.0, 3.0, 4.0}, at::kDouble).reshape({1, 4});
  WeightQuantSpec ws;
  ws.estimator = Estimator::kClipped;
  ws.clip = 1.0;
  EXPECT_TRUE(
      grad_of(fake_quantize_weight(w, ws, 1.0), w, up).equal(up * at::tensor({1.0, 0.0, 0.0, 1.0}, at::kDouble)));
  // Blend: (1 - lambda) + lambda * mask.
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 0.25), w, up)
                  .allclose(up * at::tensor({1.0, 0.75, 0.75, 1.0}, at::kDouble), 0, 1e-15));
  ws.clip = 1.5;  // now only -3.0 is beyond
  EXPECT_TRUE(
      grad_of(fake_quantize_weight(w, ws, 1.0), w, up).equal(up * at::tensor({1.0, 1.0, 0.0, 1.0}, at::kDouble)));

  // Activations: |x| * s / qmax = |x| / max|x| per token; clip 0.5 keeps |x| <= half the absmax.
  const auto x = at::tensor({1.0, -4.0, 2.0, 3.0}, at::kDouble).reshape({1, 4}).requires_grad_();
  ActQuantSpec as;
  as.estimator = Estimator::kClipped;
  as.clip = 0.5;
  EXPECT_TRUE(
      grad_of(fake_quantize_activation(x, as, 1.0), x, up).equal(up * at::tensor({1.0, 0.0, 1.0, 0.0}, at::kDouble)));
}

TEST(Estimators, FiniteDifferencesMatchAtLambdaZero) {
  // At lambda = 0 the blend is the identity, so autograd must equal central finite differences of a
  // smooth loss through it, in double precision.
  at::manual_seed(4);
  auto x = at::randn({2, 6}, at::kDouble).requires_grad_();
  const auto c = at::randn({2, 6}, at::kDouble);
  WeightQuantSpec ws;
  ws.estimator = Estimator::kClipped;
  auto loss = [&](const at::Tensor& v) {
    return (fake_quantize_activation(fake_quantize_weight(v, ws, 0.0), ActQuantSpec{}, 0.0).sin() * c).sum();
  };
  const auto g = torch::autograd::grad({loss(x)}, {x})[0];
  const double h = 1e-6;
  auto xd = x.detach();
  for (int64_t i = 0; i < xd.numel(); ++i) {
    auto p = xd.clone();
    auto m = xd.clone();
    p.view(-1)[i] += h;
    m.view(-1)[i] -= h;
    const double fd = (loss(p).item<double>() - loss(m).item<double>()) / (2 * h);
    EXPECT_NEAR(g.view(-1)[i].item<double>(), fd, 1e-8) << i;
  }
}

// At lambda = 0.5, for both estimators, in double: the chain rule through the fake quantizer is
// the downstream loss's derivative at the fake-quantized point (central finite differences there)
// times the straight-through factor, 1 (identity) or (1 - lambda) + lambda [inside the clip range]
// (clipped), with the mask computed here from the quantizer's own scales.
TEST(Estimators, FiniteDifferencesThroughTheStraightThroughFactorAtLambdaHalf) {
  at::manual_seed(5);
  const double lambda = 0.5, h = 1e-6;
  const auto c = at::randn({3, 8}, at::kDouble);
  auto downstream = [&](const at::Tensor& y) { return ((y * 1.7).sin() * c).sum(); };
  for (const auto est : {Estimator::kIdentity, Estimator::kClipped}) {
    for (const bool weights : {true, false}) {
      auto x = (at::randn({3, 8}, at::kDouble) * 0.8).requires_grad_();
      WeightQuantSpec ws;
      ws.granularity = Granularity::kPerChannel;
      ws.estimator = est;
      ws.clip = 1.2;
      ActQuantSpec as;
      as.estimator = est;
      as.clip = 0.6;
      auto fq = [&](const at::Tensor& v) {
        return weights ? fake_quantize_weight(v, ws, lambda) : fake_quantize_activation(v, as, lambda);
      };
      const auto y = fq(x);
      const auto g = torch::autograd::grad({downstream(y)}, {x})[0];
      // The straight-through factor, from the quantizers' scales.
      at::Tensor factor = at::ones_like(x);
      if (est == Estimator::kClipped) {
        at::Tensor inside;
        if (weights) {
          const auto q = quantize_weight(x.detach(), ws);
          inside = (x.detach().abs() / q.scales.reshape({-1, 1})).le(ws.clip);
        } else {
          const auto q = quantize_activation(x.detach(), as);
          inside = (x.detach().abs() * q.scales / 127.0).le(as.clip);
        }
        ASSERT_TRUE(inside.any().item<bool>() && inside.logical_not().any().item<bool>()) << "both sides exercised";
        factor = (1.0 - lambda) + lambda * inside.to(at::kDouble);
      }
      const auto yd = y.detach();
      for (int64_t i = 0; i < yd.numel(); ++i) {
        auto p = yd.clone();
        auto m = yd.clone();
        p.view(-1)[i] += h;
        m.view(-1)[i] -= h;
        const double fd = (downstream(p).item<double>() - downstream(m).item<double>()) / (2 * h);
        EXPECT_NEAR(g.view(-1)[i].item<double>(), fd * factor.view(-1)[i].item<double>(), 1e-8)
            << (weights ? "weights " : "activations ") << to_string(est) << " " << i;
      }
    }
  }
}

TEST(Estimators, ClippedPerChannelWeightsAndBlendedActivations) {
  // Per channel gammas: row 0 (0.1 + 2.0) / 2 = 1.05, row 1 (3.0 + 0.5) / 2 = 1.75;
  // |w| / gamma = 0.095, 1.905, 1.714, 0.286.
  const auto w = at::tensor({0.1, 2.0, -3.0, 0.5}, at::kDouble).reshape({2, 2}).requires_grad_();
  const auto up = at::tensor({1.0, 2.0, 3.0, 4.0}, at::kDouble).reshape({2, 2});
  WeightQuantSpec ws;
  ws.granularity = Granularity::kPerChannel;
  ws.estimator = Estimator::kClipped;
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 1.0), w, up)
                  .equal(up * at::tensor({1.0, 0.0, 0.0, 1.0}, at::kDouble).reshape({2, 2})));
  ws.clip = 1.8;  // only 2.0 (1.905) is beyond
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 1.0), w, up)
                  .equal(up * at::tensor({1.0, 0.0, 1.0, 1.0}, at::kDouble).reshape({2, 2})));

  // Activations at lambda 0.5: factor 1 inside the clip, 0.5 beyond it.
  const auto x = at::tensor({1.0, -4.0, 2.0, 3.0}, at::kDouble).reshape({1, 4}).requires_grad_();
  ActQuantSpec as;
  as.estimator = Estimator::kClipped;
  as.clip = 0.5;
  EXPECT_TRUE(grad_of(fake_quantize_activation(x, as, 0.5), x, up.reshape({1, 4}))
                  .allclose(up.reshape({1, 4}) * at::tensor({1.0, 0.5, 1.0, 0.5}, at::kDouble), 0, 1e-15));
  // At lambda 0 the clip has no effect.
  EXPECT_TRUE(grad_of(fake_quantize_activation(x, as, 0.0), x, up.reshape({1, 4})).equal(up.reshape({1, 4})));
}

TEST(Estimators, Bf16InputsReturnBf16AndOutOfRangeLambdasThrow) {
  at::manual_seed(13);
  const auto x = at::randn({2, 8}).to(at::kBFloat16).requires_grad_();
  const auto y = fake_quantize_activation(x, ActQuantSpec{}, 1.0);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  // Dequantized in float32, then rounded once to bf16.
  const auto q = quantize_activation(x.detach(), ActQuantSpec{});
  EXPECT_TRUE(y.detach().equal(dequantize_activation(q).to(at::kBFloat16)));
  const auto up = at::randn({2, 8}).to(at::kBFloat16);
  const auto g = grad_of(y, x, up);
  EXPECT_EQ(g.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(g.equal(up));

  const auto w = at::randn({2, 2});
  EXPECT_THROW(fake_quantize_weight(w, WeightQuantSpec{}, 1.5), std::invalid_argument);
  EXPECT_THROW(fake_quantize_activation(w, ActQuantSpec{}, -0.1), std::invalid_argument);
}

TEST(Estimators, WeightGradientMatchesTheAnalyticSteThroughALinearLayer) {
  // loss = sum(c * (x @ fq(W)^T)): dloss/dW = c^T x for the identity STE at every lambda, and
  // (c^T x) * ((1 - lambda) + lambda * mask) for the clipped one.
  at::manual_seed(14);
  const auto w = at::randn({3, 4}, at::kDouble).requires_grad_();
  const auto x = at::randn({5, 4}, at::kDouble);
  const auto c = at::randn({5, 3}, at::kDouble);
  const auto expected = at::matmul(c.t(), x);
  WeightQuantSpec ws;
  ws.granularity = Granularity::kPerGroup;
  ws.group_size = 3;
  for (double lambda : {0.0, 0.4, 1.0}) {
    const auto loss = (at::linear(x, fake_quantize_weight(w, ws, lambda)) * c).sum();
    EXPECT_TRUE(torch::autograd::grad({loss}, {w})[0].allclose(expected, 0, 1e-12)) << lambda;
  }
  ws.estimator = Estimator::kClipped;
  ws.clip = 0.8;
  const auto q = quantize_weight(w.detach(), ws);
  const auto mask = (w.detach().abs() / expand_scales(q.scales, ws, w.sizes())).le(0.8).to(at::kDouble);
  ASSERT_GT(mask.sum().item<double>(), 0.0);
  ASSERT_LT(mask.sum().item<double>(), 12.0);
  const auto loss = (at::linear(x, fake_quantize_weight(w, ws, 0.4)) * c).sum();
  EXPECT_TRUE(torch::autograd::grad({loss}, {w})[0].allclose(expected * (0.6 + 0.4 * mask), 0, 1e-12));
}

// The masks every clipped STE shares, by hand: per group of 2, gammas (0.1 + 2) / 2 = 1.05 and
// (3 + 0.5) / 2 = 1.75, so |w| / gamma = 0.095, 1.90, 1.71, 0.29; activations per token,
// |x| * s / qmax = |x| / max|x|.
TEST(Estimators, ClippedMasksByHand) {
  const auto w = at::tensor({0.1, 2.0, -3.0, 0.5}, at::kDouble).reshape({1, 4});
  WeightQuantSpec ws;
  ws.granularity = Granularity::kPerGroup;
  ws.group_size = 2;
  ws.estimator = Estimator::kClipped;
  ws.clip = 1.8;
  const auto q = quantize_weight(w, ws);
  const auto mask = clipped_ste_mask(w, q);
  EXPECT_EQ(mask.scalar_type(), at::kBool);
  EXPECT_TRUE(mask.equal(at::tensor({1, 0, 1, 1}).to(at::kBool).reshape({1, 4})));
  ws.estimator = Estimator::kIdentity;
  EXPECT_FALSE(clipped_ste_mask(w, quantize_weight(w, ws)).defined());

  const auto x = at::tensor({1.0, -4.0, 2.0, 3.0, 0.5, -0.25, 0.1, 0.2}, at::kDouble).reshape({2, 4});
  ActQuantSpec as;
  as.estimator = Estimator::kClipped;
  as.clip = 0.6;  // row 0: 0.25, 1, 0.5, 0.75; row 1: 1, 0.5, 0.2, 0.4
  const auto qa = quantize_activation(x, as);
  EXPECT_TRUE(
      clipped_ste_mask(x, qa.scales, as).equal(at::tensor({1, 0, 1, 0, 0, 1, 1, 1}).to(at::kBool).reshape({2, 4})));
  as.estimator = Estimator::kIdentity;
  EXPECT_FALSE(clipped_ste_mask(x, qa.scales, as).defined());
}
