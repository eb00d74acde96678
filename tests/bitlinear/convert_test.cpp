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
    stem = register_module("stem", torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1)),
                                                         torch::nn::ReLU()));
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
  EXPECT_TRUE(net->forward(x).allclose(before, 1e-6, 1e-6));
  EXPECT_EQ(set_quant_lambdas(*net, 1.0, 1.0), 3);
  EXPECT_FALSE(net->forward(x).allclose(before, 1e-3, 1e-3));
}
