#include "bitlinear/bit_linear.hpp"

#include <gtest/gtest.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

#include "bitlinear/estimators.hpp"

using namespace bitqat::bitlinear;

namespace {

BitLinear make_linear(bool bias, bool sub_norm = false) {
  BitLinearOptions o(6, 4);
  o.bias = bias;
  o.sub_norm = sub_norm;
  o.quant.weight.granularity = Granularity::kPerChannel;
  return BitLinear(o);
}

}  // namespace

TEST(BitLinear, LambdaZeroIsExactlyLinear) {
  at::manual_seed(5);
  auto bit = make_linear(true);
  torch::nn::Linear ref(torch::nn::LinearOptions(6, 4).bias(true));
  {
    at::NoGradGuard g;
    ref->weight.copy_(bit->weight);
    ref->bias.copy_(bit->bias);
  }
  bit->set_lambdas(0.0, 0.0);
  const auto x = at::randn({3, 5, 6});
  EXPECT_TRUE(bit->forward(x).equal(ref->forward(x)));
}

TEST(BitLinear, LambdaOneIsTheQuantizedForward) {
  at::manual_seed(6);
  auto bit = make_linear(true);
  const auto x = at::randn({2, 6});
  const auto wq = dequantize_weight(quantize_weight(bit->weight.detach(), bit->options.quant.weight));
  const auto xq = dequantize_activation(quantize_activation(x, bit->options.quant.act));
  EXPECT_TRUE(bit->forward(x).allclose(at::linear(xq, wq, bit->bias.detach()), 1e-6, 1e-6));
  // Output entries are (integer dot product) * gamma_row / s_token + bias.
  const auto qx = quantize_activation(x, bit->options.quant.act);
  const auto qw = quantize_weight(bit->weight.detach(), bit->options.quant.weight);
  const auto dot = at::matmul(qx.codes.to(at::kFloat), qw.codes.to(at::kFloat).t());
  const auto manual = dot * qw.scales.reshape({1, 4}) / qx.scales + bit->bias.detach();
  EXPECT_TRUE(bit->forward(x).allclose(manual, 1e-5, 1e-5));
}

TEST(BitLinear, IntermediateLambdasBlend) {
  at::manual_seed(7);
  auto bit = make_linear(false);
  bit->set_lambdas(0.5, 1.0);
  const auto x = at::randn({2, 6});
  const auto w = bit->weight.detach();
  const auto wq = dequantize_weight(quantize_weight(w, bit->options.quant.weight));
  const auto xq = dequantize_activation(quantize_activation(x, bit->options.quant.act));
  EXPECT_TRUE(bit->forward(x).allclose(at::linear(xq, w + 0.5 * (wq - w)), 1e-6, 1e-6));
  EXPECT_THROW(bit->set_lambdas(1.5, 0.0), std::invalid_argument);
}

TEST(BitLinear, GradientsReachLatentWeightsBiasAndNorm) {
  at::manual_seed(8);
  auto bit = make_linear(true, /*sub_norm=*/true);
  const auto x = at::randn({3, 6});
  bit->forward(x).pow(2).sum().backward();
  ASSERT_TRUE(bit->weight.grad().defined());
  EXPECT_GT(bit->weight.grad().abs().sum().item<float>(), 0.0f);
  EXPECT_GT(bit->bias.grad().abs().sum().item<float>(), 0.0f);
  EXPECT_GT(bit->norm->weight.grad().abs().sum().item<float>(), 0.0f);
  // STE: the weight gradient equals that of a plain linear on the quantized input.
  const auto xn = bit->norm->forward(x).detach();
  const auto xq = dequantize_activation(quantize_activation(xn, bit->options.quant.act));
  const auto y = bit->forward(x).detach();
  EXPECT_TRUE(bit->weight.grad().allclose(at::matmul((2 * y).t(), xq), 1e-4, 1e-4));
}

TEST(BitLinear, Bf16InputKeepsItsDtypeAndSubNormNormalises) {
  at::manual_seed(9);
  auto bit = make_linear(false, true);
  const auto y = bit->forward(at::randn({2, 6}).to(at::kBFloat16));
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  // RMSNorm: scaling the input does not change the output.
  const auto x = at::randn({2, 6});
  EXPECT_TRUE(bit->forward(x).allclose(bit->forward(x * 10), 1e-5, 1e-5));
  EXPECT_EQ(bit->quantized_weight().codes.sizes(), bit->weight.sizes());
}

TEST(BitConv2d, LambdaZeroIsConv2dAndOneIsQuantized) {
  at::manual_seed(10);
  BitConv2dOptions o(3, 5, 3);
  o.padding = 1;
  o.bias = true;
  BitConv2d bit(o);
  torch::nn::Conv2d ref(torch::nn::Conv2dOptions(3, 5, 3).padding(1).bias(true));
  {
    at::NoGradGuard g;
    ref->weight.copy_(bit->weight);
    ref->bias.copy_(bit->bias);
  }
  const auto x = at::randn({2, 3, 8, 8});
  bit->set_lambdas(0.0, 0.0);
  EXPECT_TRUE(bit->forward(x).equal(ref->forward(x)));
  bit->set_lambdas(1.0, 1.0);
  const auto qw = quantize_weight(bit->weight.detach(), o.quant.weight);
  EXPECT_EQ(qw.scales.sizes(), (std::vector<int64_t>{5, 3}));  // per kernel
  const auto xq = dequantize_activation(quantize_activation(x, o.quant.act));
  const auto want = at::conv2d(xq, dequantize_weight(qw), bit->bias.detach(), {1, 1}, {1, 1});
  EXPECT_TRUE(bit->forward(x).allclose(want, 1e-5, 1e-5));
  bit->forward(x).sum().backward();
  EXPECT_GT(bit->weight.grad().abs().sum().item<float>(), 0.0f);
}

TEST(BitLinear, UnquantizedSidesAreIdentityAndPerKernelIsRejected) {
  at::manual_seed(15);
  BitLinearOptions o(6, 4);
  o.quant.weight.type = WeightQuant::kNone;
  o.quant.act.type = ActQuant::kNone;
  BitLinear bit(o);
  const auto x = at::randn({3, 6});
  EXPECT_TRUE(bit->forward(x).equal(at::linear(x, bit->weight)));
  // Only the activations quantized: the weight enters unchanged.
  o.quant.act.type = ActQuant::kPerToken;
  BitLinear act_only(o);
  const auto xq = dequantize_activation(quantize_activation(x, o.quant.act));
  EXPECT_TRUE(act_only->forward(x).allclose(at::linear(xq, act_only->weight), 1e-6, 1e-6));

  BitLinearOptions k(6, 4);
  k.quant.weight.granularity = Granularity::kPerKernel;
  EXPECT_THROW(BitLinear{k}, std::invalid_argument);
  EXPECT_THROW(BitLinear(BitLinearOptions(0, 4)), std::invalid_argument);
}

TEST(BitLinear, Bf16FullyQuantizedTracksFloat32AndRegistersTheRightNames) {
  at::manual_seed(16);
  auto bit = make_linear(true, true);
  const auto x = at::randn({4, 6});
  const auto yf = bit->forward(x);
  const auto yb = bit->forward(x.to(at::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(yb.to(at::kFloat).allclose(yf, 3e-2, 3e-2));
  const auto params = bit->named_parameters();
  EXPECT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params.contains("bias"));
  EXPECT_TRUE(params.contains("norm.weight"));
  EXPECT_EQ(params.size(), 3u);
  // Linear's init: |w| <= 1 / sqrt(in) (kaiming uniform with a = sqrt(5)), |b| <= 1 / sqrt(in).
  EXPECT_LE(bit->weight.abs().max().item<float>(), 1.0f / std::sqrt(6.0f));
  EXPECT_LE(bit->bias.abs().max().item<float>(), 1.0f / std::sqrt(6.0f));
  const auto q = bit->quantized_weight();
  EXPECT_EQ(q.scales.sizes(), (std::vector<int64_t>{4}));  // per channel
  EXPECT_TRUE(dequantize_weight(q).equal(fake_quantize_weight(bit->weight, bit->options.quant.weight, 1.0)));
}

TEST(BitConv2d, StridePerTokenActivationsAndBias) {
  at::manual_seed(17);
  BitConv2dOptions o(2, 3, 3);
  o.stride = 2;
  o.padding = 1;
  o.bias = true;
  o.quant.act.type = ActQuant::kPerToken;  // per (sample, pixel) over the channels
  BitConv2d bit(o);
  const auto x = at::randn({2, 2, 5, 5});
  const auto y = bit->forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 3, 3}));
  const auto xt = x.permute({0, 2, 3, 1});
  const auto xq = dequantize_activation(quantize_activation(xt, o.quant.act)).permute({0, 3, 1, 2});
  const auto wq = dequantize_weight(quantize_weight(bit->weight.detach(), o.quant.weight));
  EXPECT_TRUE(y.allclose(at::conv2d(xq, wq, bit->bias.detach(), {2, 2}, {1, 1}), 1e-5, 1e-5));
  y.sum().backward();
  // d sum / d bias = number of output pixels per sample times the batch.
  EXPECT_TRUE(bit->bias.grad().equal(at::full({3}, 18.0f)));
  EXPECT_THROW(bit->set_lambdas(0.5, -0.5), std::invalid_argument);
  bit->set_lambdas(0.25, 0.75);
  EXPECT_EQ(bit->lambda_w(), 0.25);
  EXPECT_EQ(bit->lambda_a(), 0.75);
  EXPECT_EQ(bit->forward(x.to(at::kBFloat16)).scalar_type(), at::kBFloat16);
}

// BitLinear::fused_forward runs the fused node only where it computes what the modules compute: a
// layer at lambdas below 1, a group whose layer has its own SubLN, a SubLN together with a block norm,
// or layers with different activation specs get an empty result (the caller composes the modules).
TEST(BitLinear, FusedForwardServesOnlyFullyQuantizedCompatibleLayers) {
  at::manual_seed(4);
  BitLinearOptions o(16, 8);
  BitLinear a(o), b(o);
  o.sub_norm = true;
  BitLinear sub(o);
  const auto x = at::randn({3, 16});
  const InputNorm none;
  const InputNorm norm{at::ones({16}) * 1.5, 1e-6, false};
  EXPECT_EQ(BitLinearImpl::fused_forward({a.get(), b.get()}, x, norm).size(), 2u);
  // The layer's own SubLN is the norm: the same output as its forward, and as the composed modules.
  const auto y = BitLinearImpl::fused_forward({sub.get()}, x, none);
  ASSERT_EQ(y.size(), 1u);
  const auto want = quantized_linear(sub->norm->forward_float(x), sub->weight, sub->bias, sub->options.quant.weight,
                                     sub->options.quant.act);
  EXPECT_TRUE(y[0].equal(want));
  EXPECT_TRUE(sub->forward(x).equal(want));
  EXPECT_TRUE(BitLinearImpl::fused_forward({sub.get(), a.get()}, x, none).empty());
  EXPECT_TRUE(BitLinearImpl::fused_forward({sub.get()}, x, norm).empty());
  EXPECT_TRUE(BitLinearImpl::fused_forward({}, x, norm).empty());
  b->set_lambdas(1.0, 0.5);
  EXPECT_TRUE(BitLinearImpl::fused_forward({a.get(), b.get()}, x, norm).empty());
  b->set_lambdas(1.0, 1.0);
  b->options.quant.act.bits = 4;
  EXPECT_TRUE(BitLinearImpl::fused_forward({a.get(), b.get()}, x, norm).empty());
  EXPECT_TRUE(BitLinearImpl::fused_forward({a.get()}, x.to(at::kDouble), norm).empty());
  // At lambda_w 0.5 a SubLN layer's forward is the fake-quant path, not the fused node's lambda-1 value.
  sub->set_lambdas(0.5, 1.0);
  EXPECT_TRUE(BitLinearImpl::fused_forward({sub.get()}, x, none).empty());
  EXPECT_FALSE(sub->forward(x).equal(want));
}
