#include "bitlinear/quantizers.hpp"

#include <gtest/gtest.h>

using namespace bitqat::bitlinear;

namespace {

at::Tensor W() { return at::tensor({0.5, -1.5, 0.1, 2.0, 0.0, 0.3, -0.3, 0.6}, at::kFloat).reshape({2, 4}); }
at::Tensor codes(std::vector<int8_t> v, std::vector<int64_t> shape) {
  return at::tensor(at::ArrayRef<int8_t>(v), at::kChar).reshape(shape);
}
void expect_scales(const at::Tensor& got, std::vector<float> want) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  const auto g = got.to(at::kFloat).contiguous();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(g.data_ptr<float>()[i], want[i], 1e-6) << i;
}
WeightQuantSpec spec(WeightQuant t, Granularity g, int64_t group = 128) {
  WeightQuantSpec s;
  s.type = t;
  s.granularity = g;
  s.group_size = group;
  return s;
}

}  // namespace

TEST(RoundHalfAway, ExactHalvesGoAwayFromZero) {
  const auto x = at::tensor({0.5, -0.5, 1.5, 2.5, -2.5, 0.49999, -1.2}, at::kDouble);
  EXPECT_TRUE(round_half_away(x).equal(at::tensor({1.0, -1.0, 2.0, 3.0, -3.0, 0.0, -1.0}, at::kDouble)));
}

TEST(TernaryWeights, PerTensor) {
  const auto q = quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerTensor));
  // gamma = 5.3 / 8 = 0.6625
  EXPECT_TRUE(q.codes.equal(codes({1, -1, 0, 1, 0, 0, 0, 1}, {2, 4})));
  expect_scales(q.scales, {0.6625f});
  EXPECT_TRUE(dequantize_weight(q).allclose(q.codes.to(at::kFloat) * 0.6625));
}

TEST(TernaryWeights, PerChannel) {
  const auto q = quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerChannel));
  // gammas 4.1/4 = 1.025 and 1.2/4 = 0.3; 0.3 / (0.3 + eps) = 0.99997 -> 1, 0.6 / 0.3 = 2 -> 1
  EXPECT_TRUE(q.codes.equal(codes({0, -1, 0, 1, 0, 1, -1, 1}, {2, 4})));
  expect_scales(q.scales, {1.025f, 0.3f});
}

TEST(TernaryWeights, PerGroupWithFullAndPartialGroups) {
  const auto q2 = quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerGroup, 2));
  EXPECT_TRUE(q2.codes.equal(codes({0, -1, 0, 1, 0, 1, -1, 1}, {2, 4})));
  expect_scales(q2.scales, {1.0f, 1.05f, 0.15f, 0.45f});
  // G = 3: groups (0.5, -1.5, 0.1) and (2.0); (0, 0.3, -0.3) and (0.6).
  const auto q3 = quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerGroup, 3));
  EXPECT_TRUE(q3.codes.equal(codes({1, -1, 0, 1, 0, 1, -1, 1}, {2, 4})));
  expect_scales(q3.scales, {0.7f, 2.0f, 0.2f, 0.6f});
  EXPECT_EQ(q3.scales.sizes(), (std::vector<int64_t>{2, 2}));
  const auto deq = dequantize_weight(q3);
  EXPECT_NEAR(deq[0][3].item<float>(), 2.0f, 1e-6);
  EXPECT_NEAR(deq[1][2].item<float>(), -0.2f, 1e-6);
}

TEST(TernaryWeights, PerKernelForConvolutions) {
  const auto w = at::tensor({1.0, -1.0, 0.2, -0.2, 0.1, 0.1, 0.1, -0.4}, at::kFloat).reshape({2, 1, 2, 2});
  const auto q = quantize_weight(w, spec(WeightQuant::kTernary, Granularity::kPerKernel));
  EXPECT_TRUE(q.codes.equal(codes({1, -1, 0, 0, 1, 1, 1, -1}, {2, 1, 2, 2})));
  expect_scales(q.scales, {0.6f, 0.175f});
  EXPECT_EQ(q.scales.sizes(), (std::vector<int64_t>{2, 1}));
  EXPECT_THROW(quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerKernel)), std::invalid_argument);
}

TEST(BinaryWeights, SignAroundTheMeanWithAbsMeanScale) {
  const auto q = quantize_weight(W(), spec(WeightQuant::kBinary, Granularity::kPerChannel));
  // Row means 0.275 and 0.15.
  EXPECT_TRUE(q.codes.equal(codes({1, -1, -1, 1, -1, 1, -1, 1}, {2, 4})));
  expect_scales(q.scales, {1.025f, 0.3f});
  // sign(0) = +1: a constant row sits exactly on its mean.
  const auto c = quantize_weight(at::full({1, 4}, 0.7f), spec(WeightQuant::kBinary, Granularity::kPerTensor));
  EXPECT_TRUE(c.codes.equal(codes({1, 1, 1, 1}, {1, 4})));
  expect_scales(c.scales, {0.7f});
}

TEST(WeightProperties, CodesInTheAllowedSetAndErrorBounded) {
  at::manual_seed(0);
  const auto w = at::randn({64, 96});
  for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
    const auto t = quantize_weight(w, spec(WeightQuant::kTernary, g, 32));
    EXPECT_TRUE(t.codes.ge(-1).logical_and(t.codes.le(1)).all().item<bool>());
    // |W - Q(W)| <= max(gamma / 2, |W| - gamma) elementwise: within the rounding step or the clamp.
    const auto gamma = expand_scales(t.scales, t.spec, w.sizes());
    const auto err = (w - dequantize_weight(t)).abs();
    EXPECT_TRUE(err.le(at::maximum(gamma / 2, w.abs() - gamma) + 1e-5).all().item<bool>());
    const auto b = quantize_weight(w, spec(WeightQuant::kBinary, g, 32));
    EXPECT_TRUE(b.codes.abs().eq(1).all().item<bool>());
  }
}

TEST(Activations, PerTokenPerTensorAndBits) {
  ActQuantSpec a;
  const auto x = at::tensor({1.0, -2.0, 0.5, 0.0, 0.0, 0.0}, at::kFloat).reshape({2, 3});
  const auto q = quantize_activation(x, a);
  // Row 0: s = 127 / 2 = 63.5: 63.5 -> 64 (half away), -127, 31.75 -> 32. Row 1: all zero.
  EXPECT_TRUE(q.codes.equal(codes({64, -127, 32, 0, 0, 0}, {2, 3})));
  EXPECT_NEAR(q.scales[0][0].item<float>(), 63.5f, 1e-5);
  EXPECT_TRUE(std::isfinite(q.scales[1][0].item<float>()));
  const auto deq = dequantize_activation(q);
  EXPECT_FALSE(deq.isnan().any().item<bool>());
  EXPECT_TRUE(deq[1].eq(0).all().item<bool>());

  a.type = ActQuant::kPerTensor;
  const auto t = quantize_activation(at::tensor({127.0, 0.5, -0.5, 1.5}, at::kFloat), a);
  EXPECT_TRUE(t.codes.equal(codes({127, 1, -1, 2}, {4})));

  a.type = ActQuant::kPerToken;
  a.bits = 4;
  const auto q4 = quantize_activation(x, a);  // s = 7 / 2 = 3.5: 3.5 -> 4, -7, 1.75 -> 2
  EXPECT_TRUE(q4.codes.equal(codes({4, -7, 2, 0, 0, 0}, {2, 3})));
}

TEST(Activations, RoundTripErrorWithinHalfAStep) {
  at::manual_seed(1);
  const auto x = at::randn({16, 64}) * 3;
  const auto q = quantize_activation(x, ActQuantSpec{});
  const auto err = (x - dequantize_activation(q)).abs();
  EXPECT_TRUE(err.le(0.5 / q.scales + 1e-6).all().item<bool>());
  EXPECT_TRUE(q.codes.ge(-128).logical_and(q.codes.le(127)).all().item<bool>());
}

TEST(Names, ParseAndPrintRoundTrip) {
  WeightQuant w;
  Granularity g;
  ActQuant a;
  Estimator e;
  EXPECT_TRUE(parse("binary", &w));
  EXPECT_EQ(w, WeightQuant::kBinary);
  EXPECT_FALSE(parse("trinary", &w));
  EXPECT_TRUE(parse("per_group", &g));
  EXPECT_EQ(to_string(g), "per_group");
  EXPECT_TRUE(parse("per_token", &a));
  EXPECT_TRUE(parse("clipped", &e));
  EXPECT_EQ(to_string(e), "clipped");
  EXPECT_NEAR(traits(WeightQuant::kTernary).bits, std::log2(3.0), 1e-12);
}

TEST(TernaryWeights, ConvWeightAtEveryGranularity) {
  // One filter of two 1x2 kernels: (1, -1) and (0.2, -0.2), flattened [1, -1, 0.2, -0.2].
  const auto w = at::tensor({1.0f, -1.0f, 0.2f, -0.2f}).reshape({1, 2, 1, 2});
  const auto c = quantize_weight(w, spec(WeightQuant::kTernary, Granularity::kPerChannel));
  EXPECT_TRUE(c.codes.equal(codes({1, -1, 0, 0}, {1, 2, 1, 2})));  // gamma 0.6: 0.2 / 0.6 -> 0
  expect_scales(c.scales, {0.6f});
  const auto k = quantize_weight(w, spec(WeightQuant::kTernary, Granularity::kPerKernel));
  EXPECT_TRUE(k.codes.equal(codes({1, -1, 1, -1}, {1, 2, 1, 2})));  // gammas 1.0 and 0.2
  expect_scales(k.scales, {1.0f, 0.2f});
  // G = 3 over the flattened filter: (1, -1, 0.2) gamma 2.2 / 3, then (-0.2) on its own.
  const auto g = quantize_weight(w, spec(WeightQuant::kTernary, Granularity::kPerGroup, 3));
  EXPECT_TRUE(g.codes.equal(codes({1, -1, 0, -1}, {1, 2, 1, 2})));
  expect_scales(g.scales, {2.2f / 3, 0.2f});
  const auto deq = dequantize_weight(g);
  EXPECT_EQ(deq.sizes(), w.sizes());
  EXPECT_NEAR(deq[0][1][0][1].item<float>(), -0.2f, 1e-6);
  EXPECT_NEAR(deq[0][0][0][0].item<float>(), 2.2f / 3, 1e-6);
}

TEST(BinaryWeights, PartialGroupsAndKernelsUseTheirOwnMeans) {
  // G = 3: (0.5, -1.5, 0.1) mean -0.3 -> +, -, +; (2.0) sits on its mean -> +.
  // (0, 0.3, -0.3) mean 0 -> + (sign(0) = +1), +, -; (0.6) -> +.
  const auto q = quantize_weight(W(), spec(WeightQuant::kBinary, Granularity::kPerGroup, 3));
  EXPECT_TRUE(q.codes.equal(codes({1, -1, 1, 1, 1, 1, -1, 1}, {2, 4})));
  expect_scales(q.scales, {0.7f, 2.0f, 0.2f, 0.6f});
  // Per kernel: means 0 and -0.025.
  const auto w = at::tensor({1.0, -1.0, 0.2, -0.2, 0.1, 0.1, 0.1, -0.4}, at::kFloat).reshape({2, 1, 2, 2});
  const auto k = quantize_weight(w, spec(WeightQuant::kBinary, Granularity::kPerKernel));
  EXPECT_TRUE(k.codes.equal(codes({1, -1, 1, -1, 1, 1, 1, -1}, {2, 1, 2, 2})));
  expect_scales(k.scales, {0.6f, 0.175f});
  EXPECT_TRUE(dequantize_weight(k)[1][0].allclose(at::tensor({0.175f, 0.175f, 0.175f, -0.175f}).reshape({2, 2})));
}

TEST(WeightDtypes, Bf16ComputesInFloatAndDoubleStaysDouble) {
  // bf16 rounds 0.1 / 0.3 / 0.6 slightly, which moves no code.
  const auto qb = quantize_weight(W().to(at::kBFloat16), spec(WeightQuant::kTernary, Granularity::kPerTensor));
  EXPECT_EQ(qb.scales.scalar_type(), at::kFloat);
  EXPECT_TRUE(qb.codes.equal(codes({1, -1, 0, 1, 0, 0, 0, 1}, {2, 4})));
  EXPECT_NEAR(qb.scales.item<float>(), 0.6625f, 2e-3);
  const auto qd = quantize_weight(W().to(at::kDouble), spec(WeightQuant::kTernary, Granularity::kPerTensor));
  EXPECT_EQ(qd.scales.scalar_type(), at::kDouble);
  EXPECT_EQ(dequantize_weight(qd).scalar_type(), at::kDouble);
}

TEST(WeightErrors, BadShapesAndSpecsThrow) {
  EXPECT_THROW(quantize_weight(at::ones({4}), spec(WeightQuant::kTernary, Granularity::kPerTensor)),
               std::invalid_argument);
  EXPECT_THROW(quantize_weight(W(), spec(WeightQuant::kTernary, Granularity::kPerGroup, 0)), std::invalid_argument);
  EXPECT_THROW(quantize_weight(W(), spec(WeightQuant::kNone, Granularity::kPerTensor)), std::invalid_argument);
}

TEST(Activations, ZeroTensorsTwoBitsAndBatchedTokens) {
  ActQuantSpec a;
  a.type = ActQuant::kPerTensor;
  const auto z = quantize_activation(at::zeros({2, 3}), a);
  EXPECT_TRUE(z.codes.eq(0).all().item<bool>());
  EXPECT_TRUE(std::isfinite(z.scales.item<float>()));
  EXPECT_TRUE(dequantize_activation(z).eq(0).all().item<bool>());

  a.bits = 2;  // qmax = 1: s = 1 / 1.0
  const auto t = quantize_activation(at::tensor({0.5f, -1.0f, 0.2f, -0.5f}), a);
  EXPECT_TRUE(t.codes.equal(codes({1, -1, 0, -1}, {4})));

  a.type = ActQuant::kPerToken;
  a.bits = 8;
  const auto x = at::tensor({1.0f, 2.0f, -4.0f, 0.0f, 0.0f, 0.0f, 0.5f, 0.25f}).reshape({2, 2, 2});
  const auto q = quantize_activation(x, a);
  EXPECT_EQ(q.scales.sizes(), (std::vector<int64_t>{2, 2, 1}));
  // Tokens: (1, 2) s = 63.5: 63.5 -> 64, 127; (-4, 0) s = 31.75; zeros; (0.5, 0.25) s = 254: 127, 63.5 -> 64.
  EXPECT_TRUE(q.codes.equal(codes({64, 127, -127, 0, 0, 0, 127, 64}, {2, 2, 2})));
  EXPECT_EQ(quantize_activation(x.to(at::kDouble), a).scales.scalar_type(), at::kDouble);
  EXPECT_EQ(quantize_activation(x.to(at::kBFloat16), a).scales.scalar_type(), at::kFloat);

  a.bits = 9;
  EXPECT_THROW(quantize_activation(x, a), std::invalid_argument);
  a.bits = 1;
  EXPECT_THROW(quantize_activation(x, a), std::invalid_argument);
  a.bits = 8;
  a.type = ActQuant::kNone;
  EXPECT_THROW(quantize_activation(x, a), std::invalid_argument);
}

TEST(Names, EveryNameRoundTrips) {
  for (auto v : {WeightQuant::kNone, WeightQuant::kTernary, WeightQuant::kBinary}) {
    WeightQuant back;
    ASSERT_TRUE(parse(to_string(v), &back));
    EXPECT_EQ(back, v);
  }
  for (auto v : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup, Granularity::kPerKernel}) {
    Granularity back;
    ASSERT_TRUE(parse(to_string(v), &back));
    EXPECT_EQ(back, v);
  }
  for (auto v : {ActQuant::kNone, ActQuant::kPerToken, ActQuant::kPerTensor}) {
    ActQuant back;
    ASSERT_TRUE(parse(to_string(v), &back));
    EXPECT_EQ(back, v);
  }
  EXPECT_EQ(to_string(WeightQuant::kTernary), "ternary");
  EXPECT_EQ(to_string(Granularity::kPerKernel), "per_kernel");
  EXPECT_EQ(to_string(ActQuant::kPerToken), "per_token");
  EXPECT_EQ(to_string(Estimator::kIdentity), "identity");
  Estimator e;
  EXPECT_FALSE(parse("Identity", &e));
  EXPECT_EQ(traits(WeightQuant::kBinary).bits, 1.0);
  EXPECT_EQ(traits(WeightQuant::kTernary).code_min, -1);
  EXPECT_EQ(traits(WeightQuant::kTernary).code_max, 1);
}

// The traits table is the one list of weight types: its rows in the enum's order, the config names
// read from it (parse and the config's name table), and each row's functions what
// quantize_weight and dequantize_weight run.
TEST(WeightQuantTraits, TheTableIsTheListOfTypes) {
  ASSERT_EQ(std::size(kWeightQuantTraits), static_cast<size_t>(WeightQuant::kCount));
  for (const auto& row : kWeightQuantTraits) {
    EXPECT_EQ(&traits(row.type), &row);
    WeightQuant parsed = WeightQuant::kCount;
    EXPECT_TRUE(parse(row.name, &parsed)) << row.name;
    EXPECT_EQ(parsed, row.type) << row.name;
    EXPECT_EQ(row.quantize == nullptr, row.type == WeightQuant::kNone) << row.name;
    EXPECT_EQ(row.dequantize == nullptr, row.type == WeightQuant::kNone) << row.name;
  }
  ASSERT_EQ(kWeightQuantNames.size(), std::size(kWeightQuantTraits));
  for (size_t i = 0; i < kWeightQuantNames.size(); ++i) {
    EXPECT_EQ(kWeightQuantNames[i].value, kWeightQuantTraits[i].type);
    EXPECT_STREQ(kWeightQuantNames[i].name, kWeightQuantTraits[i].name);
  }
  EXPECT_THROW(traits(WeightQuant::kCount), std::invalid_argument);
  // Only ternary has a fused fake quantization; binary composes quantize and dequantize.
  EXPECT_NE(traits(WeightQuant::kTernary).fake_quantize, nullptr);
  EXPECT_EQ(traits(WeightQuant::kBinary).fake_quantize, nullptr);
}

TEST(WeightQuantTraits, RowFunctionsComputeTheHandDerivedCodesAndValues) {
  // W() per channel: ternary gammas 1.025 and 0.3 (see PerChannel above). Binary: means 0.275 and
  // 0.15, so codes sign(w - mean) = (+, -, -, +) and (-, +, -, +), scales mean |w| = 1.025 and 0.3.
  const auto w = W();
  const auto t = traits(WeightQuant::kTernary).quantize(w, 4, false, 1e-5);
  EXPECT_TRUE(t.codes.equal(codes({0, -1, 0, 1, 0, 1, -1, 1}, {2, 4})));
  expect_scales(t.gamma, {1.025f, 0.3f});
  const auto b = traits(WeightQuant::kBinary).quantize(w, 4, false, 1e-5);
  EXPECT_TRUE(b.codes.equal(codes({1, -1, -1, 1, -1, 1, -1, 1}, {2, 4})));
  expect_scales(b.gamma, {1.025f, 0.3f});
  expect_scales(b.mean, {0.275f, 0.15f});
  // dequantize: code * scale, per group of 3 columns here (the second group of a row has one column).
  const auto gamma = at::tensor({2.0f, 0.5f, -1.0f, 4.0f}).reshape({2, 2});
  const auto v = traits(WeightQuant::kBinary).dequantize(codes({1, -1, 1, -1, 1, 1, -1, 1}, {2, 4}), gamma, 3, false);
  EXPECT_TRUE(v.equal(at::tensor({2.0f, -2.0f, 2.0f, -0.5f, -1.0f, -1.0f, 1.0f, 4.0f}).reshape({2, 4})));
  // The same in double (gradient checks), and one scale for the whole tensor.
  const auto vd = traits(WeightQuant::kTernary).dequantize(codes({1, 0, -1, 1}, {2, 2}), at::tensor({0.25}), 2, true);
  EXPECT_EQ(vd.scalar_type(), at::kDouble);
  EXPECT_TRUE(vd.equal(at::tensor({0.25, 0.0, -0.25, 0.25}).reshape({2, 2})));
}

TEST(ScaleGrouping, OneFunctionForEveryGranularity) {
  // A weight [out 2, in 3, kh 2, kw 5]: rows of 30 columns.
  const std::vector<int64_t> conv = {2, 3, 2, 5}, lin = {4, 12};
  auto grouping = [](Granularity g, at::IntArrayRef shape, int64_t group = 8) {
    const auto s = scale_grouping(spec(WeightQuant::kTernary, g, group), shape);
    return std::make_pair(s.group, s.per_tensor);
  };
  EXPECT_EQ(grouping(Granularity::kPerTensor, conv), std::make_pair(int64_t{30}, true));
  EXPECT_EQ(grouping(Granularity::kPerChannel, conv), std::make_pair(int64_t{30}, false));
  EXPECT_EQ(grouping(Granularity::kPerGroup, conv), std::make_pair(int64_t{8}, false));
  EXPECT_EQ(grouping(Granularity::kPerKernel, conv), std::make_pair(int64_t{10}, false));
  EXPECT_EQ(grouping(Granularity::kPerTensor, lin), std::make_pair(int64_t{12}, true));
  EXPECT_EQ(grouping(Granularity::kPerChannel, lin), std::make_pair(int64_t{12}, false));
  EXPECT_THROW(grouping(Granularity::kPerKernel, lin), std::invalid_argument);
  EXPECT_THROW(grouping(Granularity::kPerGroup, lin, 0), std::invalid_argument);
}

// dequantize_weight goes through the row's dequantize: code * scale for every granularity, the
// scales broadcast by hand here.
TEST(WeightQuantTraits, DequantizeWeightIsCodeTimesItsScaleAtEveryGranularity) {
  at::manual_seed(9);
  const auto w = at::randn({3, 2, 2, 3});
  for (const auto g :
       {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup, Granularity::kPerKernel}) {
    for (const auto t : {WeightQuant::kTernary, WeightQuant::kBinary}) {
      const auto q = quantize_weight(w, spec(t, g, 5));
      const auto c = q.codes.reshape({3, 12}).to(at::kDouble);
      const auto s = q.scales.to(at::kDouble);
      auto want = at::empty({3, 12}, at::kDouble);
      for (int64_t r = 0; r < 3; ++r) {
        for (int64_t j = 0; j < 12; ++j) {
          const double scale = g == Granularity::kPerTensor    ? s.item<double>()
                               : g == Granularity::kPerChannel ? s[r].item<double>()
                               : g == Granularity::kPerGroup   ? s[r][j / 5].item<double>()
                                                               : s[r][j / 6].item<double>();
          want[r][j] = c[r][j].item<double>() * scale;
        }
      }
      const auto got = dequantize_weight(q);
      EXPECT_EQ(got.sizes(), w.sizes());
      EXPECT_TRUE(got.reshape({3, 12}).to(at::kDouble).equal(want)) << to_string(t) << " " << to_string(g);
    }
  }
}
