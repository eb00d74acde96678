// The fully quantized linear from integer codes (bitlinear/quantized_linear.hpp): the fake-quant value
// up to a float-rounding bound derived below, and the fake-quant straight-through gradients.
#include "bitlinear/quantized_linear.hpp"

#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "bitlinear/estimators.hpp"

using namespace bitqat::bitlinear;

namespace {

WeightQuantSpec wspec(WeightQuant t, Granularity g, int64_t group = 64) {
  WeightQuantSpec s;
  s.type = t;
  s.granularity = g;
  s.group_size = group;
  return s;
}

}  // namespace

TEST(QuantizedLinear, EqualsTheFakeQuantValueWithinTheFloatRoundingBound) {
  at::manual_seed(5);
  const int64_t k = 300;
  for (auto t : {WeightQuant::kTernary, WeightQuant::kBinary}) {
    for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
      const auto ws = wspec(t, g);
      const auto x = at::randn({6, k}) * 2;
      const auto w = at::randn({17, k}) * 0.05;
      const auto b = at::randn({17});
      const auto got = quantized_linear(x, w, b, ws, ActQuantSpec{});
      const auto xq = fake_quantize_activation(x, ActQuantSpec{}, 1.0);
      const auto wq = fake_quantize_weight(w, ws, 1.0);
      const auto fake = at::linear(xq, wq, b);
      // Fake quant rounds code/s and each product (2u relative per term, u = 2^-24) and sums K
      // products in float (at most (K - 1) u of the sum of magnitudes, in any order); the exact path
      // rounds acc * gamma, / s and + b (3u of the result). So |fake - exact| <= (K + 4) u S + u |b|,
      // S = sum_k |xq_k wq_k|.
      const double u = std::ldexp(1.0, -24);
      const auto s_abs = at::linear(xq.abs().to(at::kDouble), wq.abs().to(at::kDouble));
      const auto bound = s_abs * ((k + 4) * u) + b.abs().to(at::kDouble) * u;
      const auto diff = (got.to(at::kDouble) - fake.to(at::kDouble)).abs();
      EXPECT_TRUE(diff.le(bound).all().item<bool>())
          << to_string(t) << " " << to_string(g) << ": max diff " << diff.max().item<double>();
    }
  }
}

TEST(QuantizedLinear, GradientsAreTheFakeQuantStraightThroughGradients) {
  at::manual_seed(6);
  for (auto est : {Estimator::kIdentity, Estimator::kClipped}) {
    auto ws = wspec(WeightQuant::kTernary, Granularity::kPerGroup, 32);
    ws.estimator = est;
    ws.clip = 1.2;
    ActQuantSpec as;
    as.estimator = est;
    as.clip = 0.8;
    const auto x0 = at::randn({4, 96}, at::kDouble), w0 = at::randn({5, 96}, at::kDouble) * 0.1;
    const auto b0 = at::randn({5}, at::kDouble), up = at::randn({4, 5}, at::kDouble);
    auto run = [&](bool exact) {
      auto x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
      const auto y = exact ? quantized_linear(x, w, b, ws, as)
                           : at::linear(fake_quantize_activation(x, as, 1.0), fake_quantize_weight(w, ws, 1.0), b);
      (y * up).sum().backward();
      return std::vector<at::Tensor>{y.detach(), x.grad(), w.grad(), b.grad()};
    };
    const auto a = run(true), f = run(false);
    for (size_t i = 0; i < a.size(); ++i) {
      // double: products of codes and scales are exact to ~1e-16 relative; the sums differ by order.
      EXPECT_TRUE(a[i].allclose(f[i], 1e-12, 1e-12)) << "output/grad " << i << " estimator " << to_string(est);
    }
    if (est == Estimator::kClipped) {
      EXPECT_TRUE(a[1].eq(0).any().item<bool>());  // the mask bit somewhere
    }
  }
}

TEST(QuantizedLinear, ServesCpuInputsWithBothQuantizersOn) {
  const auto x = at::randn({2, 8});
  EXPECT_TRUE(quantized_linear_applicable(x, WeightQuantSpec{}, ActQuantSpec{}));
  WeightQuantSpec none;
  none.type = WeightQuant::kNone;
  EXPECT_FALSE(quantized_linear_applicable(x, none, ActQuantSpec{}));
  ActQuantSpec off;
  off.type = ActQuant::kNone;
  EXPECT_FALSE(quantized_linear_applicable(x, WeightQuantSpec{}, off));
  // K = 131072 would let float sums of codes reach 2^24: not exact any more.
  EXPECT_FALSE(quantized_linear_applicable(at::zeros({1, 131072}), WeightQuantSpec{}, ActQuantSpec{}));
  EXPECT_TRUE(quantized_linear_applicable(at::zeros({1, 131072}, at::kDouble), WeightQuantSpec{}, ActQuantSpec{}));
}
