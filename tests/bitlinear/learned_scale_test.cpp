// Learned per-output-row weight scales (quant.weight.scale: learned): the codes, LSQ's step-size
// gradient by hand and by finite differences of its surrogate in double, and BitLinear's use of them.
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <stdexcept>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/estimators.hpp"
#include "bitlinear/quantizers.hpp"

using namespace bitqat::bitlinear;

namespace {

WeightQuantSpec learned(WeightQuant type = WeightQuant::kTernary) {
  WeightQuantSpec s;
  s.type = type;
  s.granularity = Granularity::kPerChannel;
  s.scale = ScaleSource::kLearned;
  return s;
}

// The gradients of sum(out * up) with respect to w and scale.
std::pair<at::Tensor, at::Tensor> grads(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& up,
                                        const WeightQuantSpec& spec, double lambda) {
  const auto out = fake_quantize_weight_learned(w, scale, spec, lambda);
  const auto g = torch::autograd::grad({(out * up).sum()}, {w, scale});
  return {g[0], g[1]};
}

}  // namespace

TEST(LearnedScale, CodesAndScalesByHand) {
  // Row 0, s 0.4: w / s = 0.75, -1.5, 0.125, 3 -> 1, -1 (clamped), 0, 1.
  // Row 1, s 0.2: 1, -1, 0.5 (a tie, away from zero: 1), 0.
  // Row 2, s -1 -> the floor eps = 1e-5: 0.4, -0.6, 0, 1e5 -> 0, -1, 0, 1.
  const auto w = at::tensor({0.3f, -0.6f, 0.05f, 1.2f, 0.2f, -0.2f, 0.1f, 0.0f, 4e-6f, -6e-6f, 0.0f, 1.0f}).reshape({3, 4});
  const auto scale = at::tensor({0.4f, 0.2f, -1.0f});
  const auto q = quantize_weight_learned(w, scale, learned());
  EXPECT_TRUE(q.codes.equal(at::tensor({1, -1, 0, 1, 1, -1, 1, 0, 0, -1, 0, 1}, at::kChar).reshape({3, 4})));
  EXPECT_TRUE(q.scales.equal(at::tensor({0.4f, 0.2f, 1e-5f})));
  EXPECT_TRUE(dequantize_weight(q).equal(q.codes.to(at::kFloat) * q.scales.reshape({3, 1})));
  // Binary: the sign codes of w minus its row mean (row 0's mean 0.2375), the learned scale.
  const auto b = quantize_weight_learned(w, scale, learned(WeightQuant::kBinary));
  EXPECT_TRUE(b.codes.equal(quantize_weight(w, learned(WeightQuant::kBinary)).codes));
  EXPECT_TRUE(b.codes[0].equal(at::tensor({1, -1, -1, 1}, at::kChar)));
  EXPECT_TRUE(b.scales.equal(at::tensor({0.4f, 0.2f, 1e-5f})));
  // Only per-channel scales are learned; shapes must match.
  auto per_tensor = learned();
  per_tensor.granularity = Granularity::kPerTensor;
  EXPECT_THROW(quantize_weight_learned(w, scale, per_tensor), std::invalid_argument);
  EXPECT_THROW(quantize_weight_learned(w, at::ones({4}), learned()), std::invalid_argument);
}

TEST(LearnedScale, LsqGradientByHand) {
  // w / s = 0.75, -1.5, 0.125, 3 (s = 0.4), codes 1, -1, 0, 1. d(q s)/ds: q - v inside [-1, 1]
  // (0.25, -0.125), q beyond (-1, 1): 0.25, -1, -0.125, 1. With upstream 1, 2, 3, 4:
  // sum = 0.25 - 2 - 0.375 + 4 = 1.875, times g_s = 1 / sqrt(4 inputs * Q_p 1) = 0.5: 0.9375.
  const auto w = at::tensor({0.3, -0.6, 0.05, 1.2}, at::kDouble).reshape({1, 4}).requires_grad_();
  const auto s = at::tensor({0.4}, at::kDouble).requires_grad_();
  const auto up = at::tensor({1.0, 2.0, 3.0, 4.0}, at::kDouble).reshape({1, 4});
  const auto out = fake_quantize_weight_learned(w, s, learned(), 1.0);
  EXPECT_TRUE(out.allclose(at::tensor({0.4, -0.4, 0.0, 0.4}, at::kDouble).reshape({1, 4}), 0, 1e-16));
  auto [gw, gs] = grads(w, s, up, learned(), 1.0);
  EXPECT_NEAR(gs.item<double>(), 0.9375, 1e-15);
  EXPECT_TRUE(gw.equal(up));  // the identity weight STE
  std::tie(gw, gs) = grads(w, s, up, learned(), 0.5);
  EXPECT_NEAR(gs.item<double>(), 0.46875, 1e-15);  // lambda times the above
  auto clipped = learned();
  clipped.estimator = Estimator::kClipped;  // |v| <= 1: weights 0 and 2
  std::tie(gw, gs) = grads(w, s, up, clipped, 1.0);
  EXPECT_TRUE(gw.equal(at::tensor({1.0, 0.0, 3.0, 0.0}, at::kDouble).reshape({1, 4})));
  std::tie(gw, gs) = grads(w, s, up, clipped, 0.5);
  EXPECT_TRUE(gw.equal(at::tensor({1.0, 1.0, 3.0, 2.0}, at::kDouble).reshape({1, 4})));
  // Binary: d(q s)/ds = q = 1, -1, -1, 1 (row mean 0.2375); upstream 1, 2, 3, 5: 1 - 2 - 3 + 5 = 1, times 0.5.
  const auto up5 = at::tensor({1.0, 2.0, 3.0, 5.0}, at::kDouble).reshape({1, 4});
  std::tie(gw, gs) = grads(w, s, up5, learned(WeightQuant::kBinary), 1.0);
  EXPECT_NEAR(gs.item<double>(), 0.5, 1e-15);
  // A scale below the floor computes at s = eps = 1e-5 (every |v| > 1: codes 1, -1, 1, 1, d(q s)/ds = q)
  // and passes that gradient straight through: 1 - 2 + 3 + 4 = 6, times 0.5. (A zero gradient there
  // would leave the row dead for good.)
  const auto low = at::tensor({-0.1}, at::kDouble).requires_grad_();
  std::tie(gw, gs) = grads(w, low, up, learned(), 1.0);
  EXPECT_NEAR(gs.item<double>(), 3.0, 1e-12);
}

TEST(LearnedScale, GradientsAreTheLsqSurrogatesByFiniteDifferences) {
  // LSQ's surrogate of q s: s * (clamp(w / s, -1, 1) + c) with c = round(clamp(v)) - clamp(v) held at
  // its value (round's straight-through estimator); blended out = w + lambda (surrogate - w). Its
  // derivatives, by central differences in double, are the scale's gradient over g_s and, with the
  // clipped estimator at clip 1, the weight's.
  at::manual_seed(7);
  const int64_t out_f = 5, in_f = 7;
  const double lambda = 0.7;
  auto w = at::randn({out_f, in_f}, at::kDouble);
  const auto s0 = at::rand({out_f}, at::kDouble) * 0.8 + 0.4;
  const auto near_kink = ((w / s0.reshape({-1, 1})).abs() - 1.0).abs() < 1e-3;
  w = at::where(near_kink, at::zeros_like(w), w);  // no weight within the step of the clamp's kink
  const auto up = at::randn({out_f, in_f}, at::kDouble);
  auto spec = learned();
  spec.estimator = Estimator::kClipped;
  const auto v0 = (w / s0.reshape({-1, 1})).clamp(-1, 1);
  const auto c = round_half_away(v0) - v0;
  auto surrogate = [&](const at::Tensor& ww, const at::Tensor& ss) {
    const auto sc = ss.reshape({-1, 1});
    return (up * (ww + lambda * (sc * ((ww / sc).clamp(-1, 1) + c) - ww))).sum().item<double>();
  };
  const auto wg = w.clone().requires_grad_();
  const auto sg = s0.clone().requires_grad_();
  const auto [gw, gs] = grads(wg, sg, up, spec, lambda);
  const double h = 1e-6, g_s = 1.0 / std::sqrt(static_cast<double>(in_f));
  for (int64_t o = 0; o < out_f; ++o) {
    auto sp = s0.clone(), sm = s0.clone();
    sp[o] += h;
    sm[o] -= h;
    const double fd = (surrogate(w, sp) - surrogate(w, sm)) / (2 * h);
    EXPECT_NEAR(gs[o].item<double>(), g_s * fd, 1e-8 * (1.0 + std::fabs(fd))) << "row " << o;
    for (int64_t i = 0; i < in_f; ++i) {
      auto wp = w.clone(), wm = w.clone();
      wp[o][i] += h;
      wm[o][i] -= h;
      const double fdw = (surrogate(wp, s0) - surrogate(wm, s0)) / (2 * h);
      EXPECT_NEAR(gw[o][i].item<double>(), fdw, 1e-8 * (1.0 + std::fabs(fdw))) << o << ", " << i;
    }
  }
  // The forward is the surrogate's value: w + lambda (q s - w).
  const auto q = quantize_weight_learned(w, s0, spec);
  EXPECT_TRUE(fake_quantize_weight_learned(w, s0, spec, lambda)
                  .allclose(w + lambda * (dequantize_weight(q) - w), 0, 1e-15));
}

TEST(LearnedScale, BitLinearStartsAtAbsmeanAndTrainsItsScale) {
  at::manual_seed(3);
  QuantSpec spec;
  spec.weight = learned();
  BitLinearOptions o(16, 6);
  o.quant = spec;
  BitLinear layer(o);
  ASSERT_TRUE(layer->learned_scale());
  EXPECT_TRUE(layer->named_parameters(false).contains("weight_scale"));
  // Initialised from absmean: the per-channel gamma of the absmean quantizer.
  auto absmean = spec.weight;
  absmean.scale = ScaleSource::kAbsmean;
  EXPECT_TRUE(layer->weight_scale.equal(quantize_weight(layer->weight, absmean).scales));
  // The forward at lambda 1 is the fake-quantized activations times the exported codes and scales.
  const auto x = at::randn({3, 16});
  const auto y = layer->forward(x);
  const auto qw = layer->quantized_weight();
  EXPECT_TRUE(qw.scales.equal(layer->weight_scale.detach()));
  EXPECT_TRUE(y.equal(at::linear(fake_quantize_activation(x, spec.act), dequantize_weight(qw))));
  // The scale's gradient: g_s sum_i (G^T X)[o, i] d(q s)/ds[o, i], G the upstream, X the fake-quantized input.
  const auto up = at::randn({3, 6});
  (y * up).sum().backward();
  const auto xq = fake_quantize_activation(x, spec.act).to(at::kDouble);
  const auto gw = at::mm(up.to(at::kDouble).t(), xq);
  const auto v = layer->weight.detach().to(at::kDouble) / layer->weight_scale.detach().to(at::kDouble).reshape({-1, 1});
  const auto qd = qw.codes.to(at::kDouble);
  const auto d = at::where(v.abs() <= 1.0, qd - v, qd);
  const auto want = (gw * d).sum(1) / std::sqrt(16.0);
  EXPECT_TRUE(layer->weight_scale.grad().to(at::kDouble).allclose(want, 1e-5, 1e-6))
      << layer->weight_scale.grad() << want;
  EXPECT_TRUE(layer->weight.grad().to(at::kDouble).allclose(gw, 1e-5, 1e-6));
  // A changed scale changes the codes and the output: the forward reads the parameter.
  {
    at::NoGradGuard g;
    layer->weight_scale.mul_(3.0);
  }
  EXPECT_FALSE(layer->quantized_weight().codes.equal(qw.codes));
  EXPECT_FALSE(layer->forward(x).equal(y));
  // init_scale brings it back to absmean.
  layer->init_scale();
  EXPECT_TRUE(layer->weight_scale.equal(quantize_weight(layer->weight, absmean).scales));
  // Learned scales are per channel only.
  BitLinearOptions bad(16, 6);
  bad.quant.weight = learned();
  bad.quant.weight.granularity = Granularity::kPerGroup;
  EXPECT_THROW(BitLinear{bad}, std::invalid_argument);
}
