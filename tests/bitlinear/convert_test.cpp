#include "bitlinear/convert.hpp"

#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

using namespace bitqat::bitlinear;

namespace {

// A nested model whose forward goes through its containers, so swaps are visible.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    stem = register_module(
        "stem",
        torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1)), torch::nn::ReLU()));
    blocks = register_module("blocks", torch::nn::ModuleList(torch::nn::Linear(8, 8), torch::nn::Linear(8, 8)));
    heads = register_module("heads", torch::nn::ModuleDict());
    heads->update({{"cls", std::make_shared<torch::nn::LinearImpl>(8, 3)}});
  }
  at::Tensor forward(const at::Tensor& x) {
    auto h = stem->forward(x).flatten(1).narrow(1, 0, 8);
    for (const auto& m : *blocks) h = call(m, h);
    return call(heads["cls"], h);
  }
  static at::Tensor call(const std::shared_ptr<torch::nn::Module>& m, const at::Tensor& x) {
    if (auto* l = m->as<torch::nn::Linear>()) return l->forward(x);
    if (auto* b = m->as<BitLinearImpl>()) return b->forward(x);
    throw std::runtime_error("unexpected module");
  }
  torch::nn::Sequential stem{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::ModuleDict heads{nullptr};
};
TORCH_MODULE(Net);

}  // namespace

TEST(NameSelected, GlobsIncludeAndExclude) {
  EXPECT_TRUE(name_selected("layers.3.attn.q", {"layers.*"}, {}));
  EXPECT_FALSE(name_selected("lm_head", {"layers.*"}, {}));
  EXPECT_TRUE(name_selected("lm_head", {}, {}));
  EXPECT_FALSE(name_selected("layers.0.ffn.down", {"*"}, {"*.down"}));
  EXPECT_TRUE(name_selected("layers.1.attn.k", {"layers.?.attn.*"}, {}));
  EXPECT_FALSE(name_selected("layers.10.attn.k", {"layers.?.attn.*"}, {}));
}

TEST(ConvertLinears, SwapsSelectedLayersInContainersAndKeepsTheFunction) {
  at::manual_seed(11);
  Net net;
  const auto x = at::randn({2, 1, 4, 4});
  const auto before = net->forward(x).detach();
  QuantSpec spec;
  spec.act.type = ActQuant::kPerTensor;
  const auto replaced = convert_linears(*net, {"*"}, {"blocks.1"}, spec);
  EXPECT_EQ(replaced, (std::vector<std::string>{"stem.0", "blocks.0", "heads.cls"}));
  EXPECT_NE(net->stem[0]->as<BitConv2dImpl>(), nullptr);
  EXPECT_NE((*net->blocks)[0]->as<BitLinearImpl>(), nullptr);
  EXPECT_NE((*net->blocks)[1]->as<torch::nn::LinearImpl>(), nullptr);
  EXPECT_NE(net->heads["cls"]->as<BitLinearImpl>(), nullptr);
  // The registry sees the swap too (parameters are the Bit* layers' own).
  EXPECT_NE(net->named_modules()["blocks.0"]->as<BitLinearImpl>(), nullptr);

  EXPECT_EQ(set_quant_lambdas(*net, 0.0, 0.0), 3);
  EXPECT_TRUE(net->forward(x).equal(before));
  EXPECT_EQ(set_quant_lambdas(*net, 1.0, 1.0), 3);
  EXPECT_FALSE(net->forward(x).allclose(before, 1e-3, 1e-3));
}

namespace {

// Direct children next to containers, plus convolutions that BitConv2d cannot express.
struct MixedImpl : torch::nn::Module {
  MixedImpl() {
    proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(4, 4).bias(false)));
    convs = register_module(
        "convs", torch::nn::Sequential(
                     torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).stride(2).padding(1).bias(false)),
                     torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 2, 3).padding(1).padding_mode(torch::kReflect)),
                     torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 2, {1, 3}))));
  }
  torch::nn::Linear proj{nullptr};
  torch::nn::Sequential convs{nullptr};
};
TORCH_MODULE(Mixed);

}  // namespace

TEST(ConvertLinears, LambdaZeroIsExactAndWeightsAreCopied) {
  at::manual_seed(18);
  Net net;
  const auto x = at::randn({2, 1, 4, 4});
  const auto before = net->forward(x).detach();
  const auto w0 = (*net->blocks)[0]->as<torch::nn::LinearImpl>()->weight.detach().clone();
  const auto replaced = convert_linears(*net, {"blocks.*", "heads.*"}, {}, QuantSpec{});
  EXPECT_EQ(replaced, (std::vector<std::string>{"blocks.0", "blocks.1", "heads.cls"}));
  EXPECT_NE(net->stem[0]->as<torch::nn::Conv2dImpl>(), nullptr);  // not included
  EXPECT_TRUE((*net->blocks)[0]->as<BitLinearImpl>()->weight.equal(w0));
  EXPECT_EQ(net->parameters().size(), 8u);  // conv w, b and three linear w, b: nothing left behind
  set_quant_lambdas(*net, 0.0, 0.0);
  EXPECT_TRUE(net->forward(x).equal(before));
  // Only the weights quantized, then only the activations: each changes the output.
  set_quant_lambdas(*net, 1.0, 0.0);
  EXPECT_FALSE(net->forward(x).allclose(before, 1e-3, 1e-3));
  set_quant_lambdas(*net, 0.0, 1.0);
  EXPECT_FALSE(net->forward(x).allclose(before, 1e-3, 1e-3));
  EXPECT_THROW(set_quant_lambdas(*net, 2.0, 0.0), std::invalid_argument);
}

TEST(ConvertLinears, DirectChildrenStridesAndConvolutionsThatStayFullPrecision) {
  at::manual_seed(19);
  Mixed m;
  const auto x = at::randn({1, 1, 6, 6});
  const auto conv_before = m->convs[0]->as<torch::nn::Conv2dImpl>()->forward(x);
  const auto replaced = convert_linears(*m, {}, {}, QuantSpec{});
  // Reflect padding and a 1x3 kernel would change under BitConv2d: kept as they are.
  EXPECT_EQ(replaced, (std::vector<std::string>{"proj", "convs.0"}));
  EXPECT_NE(m->named_modules()["proj"]->as<BitLinearImpl>(), nullptr);
  EXPECT_NE(m->convs[1]->as<torch::nn::Conv2dImpl>(), nullptr);
  EXPECT_NE(m->convs[2]->as<torch::nn::Conv2dImpl>(), nullptr);
  auto* conv = m->convs[0]->as<BitConv2dImpl>();
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->options.stride, 2);
  EXPECT_EQ(conv->options.padding, 1);
  EXPECT_FALSE(conv->bias.defined());
  conv->set_lambdas(0.0, 0.0);
  EXPECT_TRUE(conv->forward(x).equal(conv_before));
  // The converted layers carry the spec they were given.
  QuantSpec binary;
  binary.weight.type = WeightQuant::kBinary;
  binary.weight.granularity = Granularity::kPerChannel;
  Mixed m2;
  EXPECT_EQ(convert_linears(*m2, {"proj"}, {}, binary), (std::vector<std::string>{"proj"}));
  EXPECT_EQ(m2->named_modules()["proj"]->as<BitLinearImpl>()->options.quant.weight.type, WeightQuant::kBinary);
  EXPECT_EQ(set_quant_lambdas(*m2, 1.0, 1.0), 1);
}
