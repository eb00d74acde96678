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
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 1.0), w, up).equal(up * at::tensor({1.0, 0.0, 0.0, 1.0}, at::kDouble)));
  // Blend: (1 - lambda) + lambda * mask.
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 0.25), w, up)
                  .allclose(up * at::tensor({1.0, 0.75, 0.75, 1.0}, at::kDouble), 0, 1e-15));
  ws.clip = 1.5;  // now only -3.0 is beyond
  EXPECT_TRUE(grad_of(fake_quantize_weight(w, ws, 1.0), w, up).equal(up * at::tensor({1.0, 1.0, 0.0, 1.0}, at::kDouble)));

  // Activations: |x| * s / qmax = |x| / max|x| per token; clip 0.5 keeps |x| <= half the absmax.
  const auto x = at::tensor({1.0, -4.0, 2.0, 3.0}, at::kDouble).reshape({1, 4}).requires_grad_();
  ActQuantSpec as;
  as.estimator = Estimator::kClipped;
  as.clip = 0.5;
  EXPECT_TRUE(grad_of(fake_quantize_activation(x, as, 1.0), x, up).equal(up * at::tensor({1.0, 0.0, 1.0, 0.0}, at::kDouble)));
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
