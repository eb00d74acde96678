// The fully quantized linear from integer codes (bitlinear/quantized_linear.hpp): on float32 the
// W1.58A8 reference epilogue of the exact integer sums, bit for bit; the fake-quant value up to a
// float-rounding bound derived below; the fake-quant straight-through gradients.
#include "bitlinear/quantized_linear.hpp"

#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "bitlinear/estimators.hpp"
#include "bitlinear/quant_kernels.hpp"
#include "cuda/reference.hpp"

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

TEST(QuantizedLinear, Float32IsTheReferenceEpilogueOfTheExactIntegerSums) {
  // The expected output is built independently of the layer's int8 matmul and row kernels: the
  // integer sums of the codes in double (exact: |acc| < 2^53), then cuda/reference's epilogue_ref.
  at::manual_seed(11);
  const int64_t m = 7, k = 300, n = 17;
  for (auto t : {WeightQuant::kTernary, WeightQuant::kBinary}) {
    for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
      const auto ws = wspec(t, g);
      const ActQuantSpec as;
      const auto x = at::randn({m, k}) * 2;
      const auto w = at::randn({n, k}) * 0.05;
      const auto b = at::randn({n});
      const auto got = quantized_linear(x, w, b, ws, as).contiguous();
      ASSERT_EQ(got.scalar_type(), at::kFloat);
      const auto xq = kernels::quantize_rows(x.contiguous(), as.eps, as.bits);
      const auto wq = quantize_weight(w, ws);
      const int64_t group = g == Granularity::kPerGroup ? ws.group_size : k;
      const int64_t groups = (k + group - 1) / group;
      std::vector<int32_t> acc(static_cast<size_t>(m * n * groups));  // [m, n, groups]
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t lo = gi * group, len = std::min(group, k - lo);
        const auto a = at::mm(xq.codes.narrow(1, lo, len).to(at::kDouble), wq.codes.narrow(1, lo, len).to(at::kDouble).t());
        const auto* pa = a.contiguous().data_ptr<double>();
        for (int64_t i = 0; i < m * n; ++i) acc[static_cast<size_t>(i * groups + gi)] = static_cast<int32_t>(pa[i]);
      }
      // Scales as epilogue_ref reads them: wscales[c * stride + g].
      const auto gamma = (g == Granularity::kPerTensor ? wq.scales.expand({n}) : wq.scales).to(at::kFloat).contiguous();
      std::vector<float> want(static_cast<size_t>(m * n));
      bitqat::cuda::epilogue_ref(acc.data(), m, n, groups, gamma.data_ptr<float>(), groups,
                                 xq.scales.data_ptr<float>(), b.data_ptr<float>(), want.data());
      EXPECT_EQ(std::memcmp(got.data_ptr<float>(), want.data(), want.size() * sizeof(float)), 0)
          << to_string(t) << " " << to_string(g);
    }
  }
}

TEST(QuantizedLinear, Float32GradientsEqualADoublePrecisionStraightThroughWithinTheirRoundingBound) {
  // grad_x = G W_deq and grad_w = G^T X_deq (W_deq = codes * gamma, X_deq = codes / s), computed here
  // in double from the codes. The float path rounds each dequantized value (u relative, u = 2^-24)
  // and sums R products in float (R - 1 roundings of partial sums at most), so each entry is within
  // (R + 2) u sum_r |G X_deq| of the double value.
  at::manual_seed(12);
  const int64_t m = 33, k = 200, n = 24;
  for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
    const auto ws = wspec(WeightQuant::kTernary, g);
    const ActQuantSpec as;
    auto x = (at::randn({m, k}) * 2).requires_grad_();
    auto w = (at::randn({n, k}) * 0.05).requires_grad_();
    const auto up = at::randn({m, n});
    (quantized_linear(x, w, at::Tensor(), ws, as) * up).sum().backward();
    const auto xq = kernels::quantize_rows(x.detach().contiguous(), as.eps, as.bits);
    const auto wq = quantize_weight(w.detach(), ws);
    const auto x_deq = xq.codes.to(at::kDouble) / xq.scales.to(at::kDouble).reshape({-1, 1});
    const auto w_deq = wq.codes.to(at::kDouble) * expand_scales(wq.scales, ws, w.sizes()).to(at::kDouble);
    const auto gd = up.to(at::kDouble);
    const double u = std::ldexp(1.0, -24);
    const auto want_x = at::mm(gd, w_deq), bound_x = at::mm(gd.abs(), w_deq.abs()) * ((n + 2) * u);
    const auto want_w = at::mm(gd.t(), x_deq), bound_w = at::mm(gd.abs().t(), x_deq.abs()) * ((m + 2) * u);
    const auto dx = (x.grad().to(at::kDouble) - want_x).abs(), dw = (w.grad().to(at::kDouble) - want_w).abs();
    EXPECT_TRUE(dx.le(bound_x).all().item<bool>()) << to_string(g) << ": grad_x max diff " << dx.max().item<double>();
    EXPECT_TRUE(dw.le(bound_w).all().item<bool>()) << to_string(g) << ": grad_w max diff " << dw.max().item<double>();
    EXPECT_GT(want_x.abs().max().item<double>(), 0.0);
  }
}

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
