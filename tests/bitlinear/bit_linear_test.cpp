#include "bitlinear/bit_linear.hpp"

#include <gtest/gtest.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

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
