// The BitLinear kernels of the op layer (bitlinear/ops/w158a8_linear.hpp): packing a layer for
// inference, packing a whole tree, and what has no packed form.
#include "bitlinear/ops/w158a8_linear.hpp"

#include <gtest/gtest.h>
#include <torch/nn/module.h>

using namespace bitqat::bitlinear;
using namespace bitqat::bitlinear::ops;

TEST(BitLinear, ToPackedKeepsTheFullyQuantizedForwardWithoutLatentWeights) {
  at::manual_seed(21);
  BitLinearOptions o(256, 24);
  o.sub_norm = true;
  o.bias = true;
  BitLinear l(o);
  const auto x = at::randn({3, 5, 256});
  at::Tensor want;
  {
    at::NoGradGuard g;
    want = l->forward(x);  // lambdas 1: fake-quant
  }
  pack_layer(*l);
  EXPECT_TRUE(!l->has_latent_weights() && packed_of(*l) != nullptr);
  EXPECT_FALSE(l->weight.defined());
  const auto params = l->named_parameters();
  EXPECT_EQ(params.size(), 0u);  // weight, bias and the SubLN weight now live in packed.*
  const auto buffers = l->named_buffers();
  for (const char* n : {"packed.packed", "packed.scales", "packed.bias", "packed.norm_weight"}) {
    EXPECT_TRUE(buffers.contains(n)) << n;
  }
  EXPECT_THROW(l->quantized_weight(), std::logic_error);
  const auto got = l->forward(x);
  EXPECT_EQ(got.sizes(), want.sizes());
  // The fake-quant layer at lambda 1 computes from the integer codes too, with the same fused SubLN,
  // codes and epilogue order (bitlinear/quantized_linear.hpp): the outputs are identical.
  EXPECT_TRUE(got.equal(want));
}

// Binary codes {-1, +1} (sign of W - mean(W), scale mean|W| per channel) fit the ternary 2-bit layout:
// the packed layer computes what the binary layer computes at lambda 1.
TEST(PackLayer, BinaryWeightsUseTheTernaryLayout) {
  at::manual_seed(22);
  BitLinearOptions o(128, 16);
  o.bias = true;
  o.quant.weight.type = WeightQuant::kBinary;
  o.quant.weight.granularity = Granularity::kPerChannel;
  BitLinear l(o);
  const auto x = at::randn({4, 128});
  const auto q = l->quantized_weight();
  at::Tensor want;
  {
    at::NoGradGuard g;
    want = l->forward(x);
  }
  pack_layer(*l);
  const auto* p = packed_of(*l);
  ASSERT_NE(p, nullptr);
  PackedTernary pt;
  pt.packed = p->packed;
  pt.scales = p->scales;
  pt.kind = p->kind;
  pt.n = 16;
  pt.k = 128;
  pt.group = 128;
  const auto codes = unpack_codes(pt);
  EXPECT_TRUE(codes.equal(q.codes));  // every code is -1 or +1, stored exactly
  EXPECT_EQ(codes.abs().min().item<int>(), 1);
  EXPECT_TRUE(l->forward(x).equal(want));  // same integer products and epilogue order
}

TEST(PackLayer, RefusesQuantizationsWithoutAPackedForm) {
  BitLinearOptions o(64, 8);
  o.quant.act.bits = 4;
  EXPECT_THROW(pack_layer(*BitLinear(o)), std::invalid_argument);
  o = BitLinearOptions(64, 8);
  o.quant.weight.granularity = Granularity::kPerGroup;
  o.quant.weight.group_size = 32;
  EXPECT_THROW(pack_layer(*BitLinear(o)), std::invalid_argument);
}

TEST(PackForInference, PacksQuantizedLayersKeepsFullPrecisionOnesAndNamesBadOnes) {
  auto root = std::make_shared<torch::nn::Module>();
  BitLinearOptions q(64, 8), fp(64, 8), bad(64, 8);
  fp.quant.weight.type = WeightQuant::kNone;
  fp.quant.act.type = ActQuant::kNone;
  root->register_module("a", BitLinear(q));
  root->register_module("b", BitLinear(fp));
  EXPECT_EQ(pack_for_inference(*root), (std::vector<std::string>{"a"}));
  EXPECT_TRUE(root->named_modules()["a"]->as<BitLinearImpl>()->has_latent_weights() == false);
  EXPECT_FALSE(root->named_modules()["b"]->as<BitLinearImpl>()->has_latent_weights() == false);
  EXPECT_TRUE(pack_for_inference(*root).empty());  // idempotent
  bad.quant.act.bits = 4;
  root->register_module("c", BitLinear(bad));
  try {
    pack_for_inference(*root);
    FAIL() << "a layer with 4-bit activations was packed";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("c: pack_layer: activations are per_token with 4 bits", 0), 0u) << e.what();
  }
}
