// The fully quantized linear from integer codes (bitlinear/quantized_linear.hpp): on float32 the
// W1.58A8 reference epilogue of the exact integer sums, bit for bit; the fake-quant value up to a
// float-rounding bound derived below; the fake-quant straight-through gradients.
#include "bitlinear/quantized_linear.hpp"

#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bitlinear/estimators.hpp"
#include "bitlinear/quant_kernels.hpp"
#include "bitlinear/rms_norm.hpp"
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

// The float32 output against cuda/reference's epilogue_ref of the integer sums, which are computed
// here in double from the codes (exact: |acc| < 2^53), independently of the layer's int8 matmul and
// row kernels. Bit for bit.
void expect_reference_epilogue(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const WeightQuantSpec& ws,
                               const std::string& what) {
  const ActQuantSpec as;
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const auto got = quantized_linear(x, w, b, ws, as).contiguous();
  ASSERT_EQ(got.scalar_type(), at::kFloat) << what;
  const auto xq = kernels::quantize_rows(x.contiguous(), as.eps, as.bits);
  const auto wq = quantize_weight(w, ws);
  const int64_t group = ws.granularity == Granularity::kPerGroup ? ws.group_size : k;
  const int64_t groups = (k + group - 1) / group;
  std::vector<int32_t> acc(static_cast<size_t>(m * n * groups));  // [m, n, groups]
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t lo = gi * group, len = std::min(group, k - lo);
    const auto a = at::mm(xq.codes.narrow(1, lo, len).to(at::kDouble), wq.codes.narrow(1, lo, len).to(at::kDouble).t());
    const auto* pa = a.contiguous().data_ptr<double>();
    for (int64_t i = 0; i < m * n; ++i) acc[static_cast<size_t>(i * groups + gi)] = static_cast<int32_t>(pa[i]);
  }
  // Scales as epilogue_ref reads them: wscales[c * stride + g].
  const auto gamma =
      (ws.granularity == Granularity::kPerTensor ? wq.scales.expand({n}) : wq.scales).to(at::kFloat).contiguous();
  const auto bias = b.defined() ? b.contiguous() : at::Tensor();
  std::vector<float> want(static_cast<size_t>(m * n));
  bitqat::cuda::epilogue_ref(acc.data(), m, n, groups, gamma.data_ptr<float>(), groups, xq.scales.data_ptr<float>(),
                             bias.defined() ? bias.data_ptr<float>() : nullptr, want.data());
  EXPECT_EQ(std::memcmp(got.data_ptr<float>(), want.data(), want.size() * sizeof(float)), 0) << what;
}

TEST(QuantizedLinear, Float32IsTheReferenceEpilogueOfTheExactIntegerSums) {
  at::manual_seed(11);
  const int64_t m = 7, n = 17;
  // K = 300 with groups of 64 (a short last group), K = 129 (a last group one column wide), K = 1.
  for (const int64_t k : {int64_t{300}, int64_t{129}, int64_t{1}}) {
    for (auto t : {WeightQuant::kTernary, WeightQuant::kBinary}) {
      for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
        for (const bool with_bias : {true, false}) {
          const auto x = at::randn({m, k}) * 2;
          const auto w = at::randn({n, k}) * 0.05;
          const auto b = with_bias ? at::randn({n}) : at::Tensor();
          expect_reference_epilogue(x, w, b, wspec(t, g),
                                    fmt::format("K {} {} {} bias {}", k, to_string(t), to_string(g), with_bias));
        }
      }
    }
  }
}

TEST(QuantizedLinear, Float32IsExactAtTheLargestCodes) {
  // Neighbouring activation codes +-127 against weights of all +1, all -1 and alternating signs:
  // the pairs of products oneDNN's non-VNNI int8 kernels add in int16 are at their largest here.
  const int64_t m = 6, k = 256, n = 8;
  auto x = at::full({m, k}, 3.0f);
  x.slice(1, 1, k, 2).fill_(-3.0f);  // codes 127, -127, 127, ...
  x[1].fill_(3.0f);                   // all 127
  x[2].fill_(-3.0f);                  // all -127
  auto w = at::full({n, k}, 0.05f);
  w[1].fill_(-0.05f);
  w[2].slice(0, 1, k, 2).fill_(-0.05f);
  for (auto g : {Granularity::kPerTensor, Granularity::kPerGroup}) {
    expect_reference_epilogue(x, w, at::Tensor(), wspec(WeightQuant::kTernary, g), to_string(g));
  }
  const auto codes = kernels::quantize_rows(x, 1e-5, 8).codes;
  EXPECT_EQ(codes.abs().max().item<int>(), 127);
  // The extreme sum itself: row 1 (all 127) against row 0 of w (all +1 codes) is 127 K.
  const auto y = quantized_linear(x, w, at::Tensor(), wspec(WeightQuant::kTernary, Granularity::kPerTensor),
                                  ActQuantSpec{});
  const float gamma = quantize_weight(w, wspec(WeightQuant::kTernary, Granularity::kPerTensor)).scales.item<float>();
  const float s = kernels::quantize_rows(x, 1e-5, 8).scales[1].item<float>();
  EXPECT_EQ(y[1][0].item<float>(), (127.0f * k * gamma) / s);
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
  // int8 codes come with one float32 scale per row: a per-tensor scale is refused, not read past.
  const auto codes = kernels::quantize_rows(x, 1e-5, 8);
  const auto w = at::randn({3, 8});
  EXPECT_NO_THROW(quantized_linear(x, ActCodes{codes.codes, codes.scales}, w, at::Tensor(), WeightQuantSpec{},
                                   ActQuantSpec{}));
  EXPECT_THROW(quantized_linear(x, ActCodes{codes.codes, codes.scales.narrow(0, 0, 1)}, w, at::Tensor(),
                                WeightQuantSpec{}, ActQuantSpec{}),
               std::invalid_argument);
  EXPECT_THROW(quantized_linear(x, ActCodes{codes.codes, codes.scales.to(at::kDouble)}, w, at::Tensor(),
                                WeightQuantSpec{}, ActQuantSpec{}),
               std::invalid_argument);
}

// ---- quantized_linears: the norm (and relu^2) fused with several exact linears ---------------------

namespace {

struct GroupCase {
  at::Tensor x, nw;
  std::vector<at::Tensor> w, b;
  std::vector<WeightQuantSpec> ws;
  std::vector<at::Tensor> up;  // the upstream gradients of each output
};

GroupCase group_case(int64_t k, const std::vector<int64_t>& n, const std::vector<Granularity>& g, uint64_t seed) {
  at::manual_seed(seed);
  GroupCase c;
  c.x = at::randn({3, 11, k}) * 3;
  c.nw = at::rand({k}) + 0.5;
  for (size_t i = 0; i < n.size(); ++i) {
    c.w.push_back(at::randn({n[i], k}) * 0.05);
    c.b.push_back(i == 1 ? at::Tensor() : at::randn({n[i]}) * 0.1);
    c.ws.push_back(wspec(WeightQuant::kTernary, g[i]));
    c.up.push_back(at::randn({3, 11, n[i]}));
  }
  return c;
}

// Leaf copies of a case's tensors, so the fused and the composed graphs each get their own gradients.
struct Leaves {
  at::Tensor x, nw;
  std::vector<at::Tensor> w, b;
};
Leaves leaves(const GroupCase& c) {
  Leaves l{c.x.clone().requires_grad_(), c.nw.clone().requires_grad_(), {}, {}};
  for (size_t i = 0; i < c.w.size(); ++i) {
    l.w.push_back(c.w[i].clone().requires_grad_());
    l.b.push_back(c.b[i].defined() ? c.b[i].clone().requires_grad_() : at::Tensor());
  }
  return l;
}

// relu(u)^2 as the composed graph computes it: at::relu, then a product (d/du = g relu + g relu).
at::Tensor relu_sq(const at::Tensor& u) {
  const auto r = at::relu(u);
  return r * r;
}

// Runs both graphs; returns {fused, composed} leaves after backward, and checks the outputs bit for bit.
// norm false: no RMSNorm (and x is fed as a strided view, the transpose of a [K, ...] tensor).
std::pair<Leaves, Leaves> run_both(const GroupCase& c, bool relu2, bool norm = true) {
  const ActQuantSpec as;
  auto f = leaves(c), e = leaves(c);
  const auto fx = norm ? f.x : f.x.transpose(0, 2).contiguous().transpose(0, 2);
  if (!norm) {
    EXPECT_FALSE(fx.is_contiguous());
  }
  const auto ys = quantized_linears(fx, InputNorm{norm ? f.nw : at::Tensor(), 1e-6, relu2}, f.w, f.b, c.ws, as);
  const auto xa = relu2 ? relu_sq(e.x) : e.x;
  const auto xn = norm ? rms_norm(xa, e.nw, 1e-6) : xa;
  at::Tensor lf = at::zeros({}), le = at::zeros({});
  EXPECT_EQ(ys.size(), c.w.size());
  for (size_t i = 0; i < c.w.size(); ++i) {
    const auto y = quantized_linear(xn, e.w[i], e.b[i], c.ws[i], as);
    EXPECT_EQ(ys[i].sizes(), y.sizes());
    EXPECT_TRUE(ys[i].equal(y)) << "output " << i;
    lf = lf + (ys[i] * c.up[i]).sum();
    le = le + (y * c.up[i]).sum();
  }
  lf.backward();
  le.backward();
  return {f, e};
}

}  // namespace

TEST(QuantizedLinears, OneLayerAfterSubLnOrReluSquaredIsTheComposedGraphBitForBit) {
  // One weight: the fused node runs the same kernels in the same order as RMSNorm -> quantized_linear
  // (and relu^2 before it), so outputs and every gradient are equal, not just close.
  for (const bool relu2 : {false, true}) {
    for (const auto g : {Granularity::kPerChannel, Granularity::kPerGroup}) {
      const auto c = group_case(130, {70}, {g}, relu2 ? 3 : 4);
      const auto [f, e] = run_both(c, relu2);
      EXPECT_TRUE(f.x.grad().equal(e.x.grad())) << "relu2 " << relu2;
      EXPECT_TRUE(f.nw.grad().equal(e.nw.grad())) << "relu2 " << relu2;
      EXPECT_TRUE(f.w[0].grad().equal(e.w[0].grad()));
      EXPECT_TRUE(f.b[0].grad().equal(e.b[0].grad()));
      EXPECT_GT(f.x.grad().abs().max().item<float>(), 0.0f);
      if (relu2) {  // negative u passes no gradient
        EXPECT_TRUE(f.x.grad().masked_select(c.x.lt(0)).eq(0).all().item<bool>());
      }
    }
  }
}

TEST(QuantizedLinears, SharedInputGivesTheComposedOutputsAndGradientsWithinTheSummationBound) {
  // q, k, v on one normed input. Outputs and weight / bias gradients are the same computations as the
  // composed graph: equal bits. The input's gradient gx = sum_i G_i W_i is summed in another order
  // (mm, then addmm twice; the composed graph adds three mm results): each float32 evaluation is within
  // gamma_n S of the exact value, S = sum_i |G_i| |W_i|, n = sum_i N_i + 2 (Higham, Accuracy and
  // Stability, 3.5), so |dgx| <= E = 2 gamma_n S. The RMSNorm backward is linear in gx:
  // dx = r (gx w - xhat mean(gx w xhat)), so the difference is at most r (E|w| + |xhat| mean(E|w||xhat|))
  // plus the kernel's own rounding on each input (5 roundings of terms of size r(|gx w| + |xhat| c'),
  // c' = mean |gx w xhat| bounding the mean c and its rounding) twice; dw = sum over rows of gx xhat: sum E|xhat| plus twice gamma_M sum |gx xhat|.
  const int64_t k = 96;
  const std::vector<int64_t> n{96, 48, 48};
  const auto c = group_case(k, n, {Granularity::kPerChannel, Granularity::kPerTensor, Granularity::kPerGroup}, 5);
  const auto [f, e] = run_both(c, false);
  for (size_t i = 0; i < n.size(); ++i) {
    EXPECT_TRUE(f.w[i].grad().equal(e.w[i].grad())) << "weight " << i;
    if (c.b[i].defined()) {
      EXPECT_TRUE(f.b[i].grad().equal(e.b[i].grad())) << "bias " << i;
    }
  }
  const double u = std::ldexp(1.0, -24);
  auto gamma = [&](double m) { return m * u / (1 - m * u); };
  const int64_t rows = 33;
  at::Tensor S = at::zeros({rows, k}, at::kDouble), gx = at::zeros({rows, k}, at::kDouble);
  for (size_t i = 0; i < n.size(); ++i) {
    const auto wq = quantize_weight(c.w[i], c.ws[i]);
    const auto w_deq = wq.codes.to(at::kDouble) * expand_scales(wq.scales, c.ws[i], c.w[i].sizes()).to(at::kDouble);
    const auto gi = c.up[i].reshape({rows, -1}).to(at::kDouble);
    S = S + at::mm(gi.abs(), w_deq.abs());
    gx = gx + at::mm(gi, w_deq);
  }
  const auto E = S * (2 * gamma(96 + 48 + 48 + 2));
  const auto x2 = c.x.reshape({rows, k}).to(at::kDouble);
  const auto r = (x2.pow(2).mean(-1, true) + 1e-6).rsqrt();
  const auto xhat = (x2 * r).abs();
  const auto w = c.nw.to(at::kDouble).abs();
  const auto cterm = (gx * c.nw.to(at::kDouble) * x2 * r).abs().mean(-1, true);
  const auto bound_x = r * (E * w + xhat * (E * w * xhat).mean(-1, true)) +
                       2 * 5 * u * r * (gx.abs() * w + xhat * cterm) * 1.01;  // 1.01: r and xhat rounded too
  const auto bound_w = (E * xhat).sum(0) + 2 * gamma(rows + 2) * (gx.abs() * xhat).sum(0) * 1.01;
  const auto dx = (f.x.grad().reshape({rows, k}).to(at::kDouble) - e.x.grad().reshape({rows, k}).to(at::kDouble)).abs();
  const auto dw = (f.nw.grad().to(at::kDouble) - e.nw.grad().to(at::kDouble)).abs();
  EXPECT_TRUE(dx.le(bound_x).all().item<bool>()) << "max |dx| " << dx.max().item<double>();
  EXPECT_TRUE(dw.le(bound_w).all().item<bool>()) << "max |dw| " << dw.max().item<double>();
  EXPECT_GT(e.x.grad().abs().max().item<float>(), 0.0f);
}

TEST(QuantizedLinears, RefusesWhatItDoesNotServe) {
  const auto c = group_case(64, {8, 8}, {Granularity::kPerChannel, Granularity::kPerChannel}, 6);
  const ActQuantSpec as;
  const InputNorm norm{c.nw, 1e-6, false};
  EXPECT_TRUE(quantized_linears_applicable(c.x, norm, c.ws, as));
  // relu^2 needs the norm; double inputs, per-tensor activations, the clipped estimator and more than
  // three weights are served by the composed modules.
  EXPECT_FALSE(quantized_linears_applicable(c.x, InputNorm{at::Tensor(), 1e-6, true}, c.ws, as));
  EXPECT_FALSE(quantized_linears_applicable(c.x.to(at::kDouble), norm, c.ws, as));
  ActQuantSpec per_tensor;
  per_tensor.type = ActQuant::kPerTensor;
  EXPECT_FALSE(quantized_linears_applicable(c.x, norm, c.ws, per_tensor));
  ActQuantSpec clipped;
  clipped.estimator = Estimator::kClipped;
  EXPECT_FALSE(quantized_linears_applicable(c.x, norm, c.ws, clipped));
  EXPECT_FALSE(quantized_linears_applicable(c.x, norm, std::vector<WeightQuantSpec>(4, c.ws[0]), as));
  EXPECT_FALSE(quantized_linears_applicable(c.x, InputNorm{at::ones({63}), 1e-6, false}, c.ws, as));
  EXPECT_THROW(quantized_linears(c.x, norm, c.w, {c.b[0]}, c.ws, as), std::invalid_argument);
  EXPECT_THROW(quantized_linears(c.x, norm, {}, {}, {}, as), std::invalid_argument);
  EXPECT_THROW(quantized_linears(c.x, norm, {c.w[0].narrow(1, 0, 63)}, {c.b[0]}, {c.ws[0]}, as),
               std::invalid_argument);
  EXPECT_THROW(quantized_linears(c.x, norm, {c.w[0]}, {at::zeros({7})}, {c.ws[0]}, as), std::invalid_argument);
  EXPECT_THROW(quantized_linears(c.x.to(at::kDouble), norm, c.w, c.b, c.ws, as), std::invalid_argument);
}

TEST(QuantizedLinears, TwoWeightsWithoutANormStridedInputAndAClippedWeightEstimator) {
  // gate / up without a block norm, x a strided view, the second weight with the clipped estimator (its
  // mask is applied as quantized_linear applies it). Outputs and weight / bias gradients: equal bits.
  // The input's gradient is the sum of two products, in the other order: within 2 gamma_n S (see above).
  auto c = group_case(72, {40, 24}, {Granularity::kPerChannel, Granularity::kPerGroup}, 8);
  c.ws[1].estimator = Estimator::kClipped;
  c.ws[1].clip = 1.0;
  c.w[1] = c.w[1] * 3;  // some weights beyond the clip
  const auto [f, e] = run_both(c, false, /*norm=*/false);
  const auto mask = (c.w[1].abs() / expand_scales(quantize_weight(c.w[1], c.ws[1]).scales, c.ws[1], c.w[1].sizes()))
                        .le(1.0);
  EXPECT_FALSE(mask.all().item<bool>());
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(f.w[i].grad().equal(e.w[i].grad())) << "weight " << i;
  EXPECT_TRUE(f.w[1].grad().masked_select(mask.logical_not()).eq(0).all().item<bool>());
  EXPECT_TRUE(f.b[0].grad().equal(e.b[0].grad()));
  const double u = std::ldexp(1.0, -24), n = 40 + 24 + 2;
  at::Tensor S = at::zeros({33, 72}, at::kDouble);
  for (size_t i = 0; i < 2; ++i) {
    const auto wq = quantize_weight(c.w[i], c.ws[i]);
    const auto w_deq = wq.codes.to(at::kDouble) * expand_scales(wq.scales, c.ws[i], c.w[i].sizes()).to(at::kDouble);
    S = S + at::mm(c.up[i].reshape({33, -1}).to(at::kDouble).abs(), w_deq.abs());
  }
  const auto dx = (f.x.grad() - e.x.grad()).reshape({33, 72}).to(at::kDouble).abs();
  EXPECT_TRUE(dx.le(S * (2 * n * u / (1 - n * u))).all().item<bool>()) << "max |dx| " << dx.max().item<double>();
  EXPECT_GT(e.x.grad().abs().max().item<float>(), 0.0f);
}

TEST(QuantizedLinears, ReluSquaredWithTwoWeightsAndAnUnusedOutput) {
  // relu^2, the norm and two weights: outputs and weight gradients equal the composed graph's bits.
  const auto c = group_case(64, {32, 16}, {Granularity::kPerChannel, Granularity::kPerTensor}, 9);
  const auto [f, e] = run_both(c, true);
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(f.w[i].grad().equal(e.w[i].grad())) << "weight " << i;
  // Only the first output used: the second weight gets no gradient, and the input's is the one-weight
  // node's (the node skips an output without a gradient).
  auto l2 = leaves(c), l1 = leaves(c);
  const ActQuantSpec as;
  quantized_linears(l2.x, InputNorm{l2.nw, 1e-6, true}, l2.w, l2.b, c.ws, as)[0].mul(c.up[0]).sum().backward();
  quantized_linears(l1.x, InputNorm{l1.nw, 1e-6, true}, {l1.w[0]}, {l1.b[0]}, {c.ws[0]}, as)[0]
      .mul(c.up[0])
      .sum()
      .backward();
  EXPECT_FALSE(l2.w[1].grad().defined());
  EXPECT_TRUE(l2.x.grad().equal(l1.x.grad()));
  EXPECT_TRUE(l2.nw.grad().equal(l1.nw.grad()));
}
