#include "models/lm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"
#include "models/attention.hpp"

using namespace bitqat::models;
using bitqat::bitlinear::QuantSpec;
using bitqat::core::Node;

namespace {

using S = std::vector<std::string>;

LMConfig tiny(int64_t kv = 4) {
  LMConfig c;
  c.vocab_size = 50;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv;
  c.ffn_dim = 64;
  c.max_seq_len = 32;
  return c;
}

}  // namespace

TEST(BitLM, ShapesNamesAndQuantizationPolicy) {
  at::manual_seed(1);
  BitLM lm(tiny(2), QuantSpec{}, S{"layers.*"}, S{"*.attn.v"});
  const auto tokens = at::randint(0, 50, {3, 10}, at::kLong);
  EXPECT_EQ(lm->forward(tokens).sizes(), (std::vector<int64_t>{3, 10, 50}));
  const auto names = bitqat::bitlinear::quantized_layer_names(*lm);
  EXPECT_EQ(names, (std::vector<std::string>{"layers.0.attn.q", "layers.0.attn.k", "layers.0.attn.o", "layers.0.ffn.up",
                                             "layers.0.ffn.down", "layers.1.attn.q", "layers.1.attn.k",
                                             "layers.1.attn.o", "layers.1.ffn.up", "layers.1.ffn.down"}));
  const auto params = lm->named_parameters();
  for (const char* n : {"embed.weight", "layers.0.attn_norm.weight", "layers.0.attn.q.weight",
                        "layers.0.attn.o.norm.weight", "layers.1.ffn.down.norm.weight", "norm.weight"}) {
    EXPECT_TRUE(params.contains(n)) << n;
  }
  EXPECT_FALSE(params.contains("lm_head.weight"));                                      // tied
  EXPECT_EQ(params["layers.0.attn.k.weight"].sizes(), (std::vector<int64_t>{16, 32}));  // 2 kv heads x 8
}

TEST(BitLM, IsCausal) {
  at::manual_seed(2);
  BitLM lm(tiny(), QuantSpec{}, S{"*"}, S{});
  auto a = at::randint(0, 50, {1, 12}, at::kLong);
  auto b = a.clone();
  b[0][7] = (a[0][7].item<int64_t>() + 1) % 50;
  const auto la = lm->forward(a), lb = lm->forward(b);
  EXPECT_TRUE(la.narrow(1, 0, 7).allclose(lb.narrow(1, 0, 7), 1e-5, 1e-5));
  EXPECT_FALSE(la.narrow(1, 7, 1).allclose(lb.narrow(1, 7, 1), 1e-5, 1e-5));
}

TEST(BitLM, GroupedQueryEqualsMultiHeadWithRepeatedKV) {
  at::manual_seed(3);
  BitLM gqa(tiny(2), QuantSpec{}, S{"*"}, S{});
  BitLM mha(tiny(4), QuantSpec{}, S{"*"}, S{});
  bitqat::bitlinear::set_quant_lambdas(*gqa, 0.0, 0.0);
  bitqat::bitlinear::set_quant_lambdas(*mha, 0.0, 0.0);
  {
    at::NoGradGuard g;
    auto src = gqa->named_parameters();
    for (auto& p : mha->named_parameters()) {
      const auto& name = p.key();
      auto s = src[name];
      if (name.find("attn.k.weight") != std::string::npos || name.find("attn.v.weight") != std::string::npos) {
        // kv head h serves query heads 2h and 2h+1: repeat each head's 8 rows.
        s = s.view({2, 1, 8, 32}).expand({2, 2, 8, 32}).reshape({32, 32});
      }
      p.value().copy_(s);
    }
  }
  const auto tokens = at::randint(0, 50, {2, 9}, at::kLong);
  EXPECT_TRUE(gqa->forward(tokens).allclose(mha->forward(tokens), 1e-5, 1e-5));
}

TEST(Rope, RotatesPairsOfHalvesByPositionTimesFrequency) {
  // head_dim 4: frequencies theta^0 = 1 and theta^(-1/2) = 0.01 for theta = 10000.
  const auto [cos, sin] = rope_tables(3, 1, 4, 10000.0, at::Device(at::kCPU));
  const auto x = at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 1, 1, 4});
  const auto y = apply_rope(x, cos, sin).view({4});
  const double a = 3.0, b = 0.03;  // position 3 times each frequency
  EXPECT_NEAR(y[0].item<float>(), 1 * std::cos(a) - 3 * std::sin(a), 1e-5);
  EXPECT_NEAR(y[1].item<float>(), 2 * std::cos(b) - 4 * std::sin(b), 1e-5);
  EXPECT_NEAR(y[2].item<float>(), 3 * std::cos(a) + 1 * std::sin(a), 1e-5);
  EXPECT_NEAR(y[3].item<float>(), 4 * std::cos(b) + 2 * std::sin(b), 1e-5);
}

TEST(Rope, FusedProjectionLayoutPassMatchesApplyRopeBitForBit) {
  // rope_bthd does apply_rope's float operations in the same order, and the project builds as ISO
  // C++17 (CMAKE_CXX_EXTENSIONS OFF) where GCC does not contract a*b+c, so both agree exactly.
  at::manual_seed(11);
  const int64_t B = 2, T = 5, H = 3, D = 8;
  const auto [cos, sin] = rope_tables(7, T, D, 10000.0, at::Device(at::kCPU));
  const auto x = at::randn({B, T, H, D}).requires_grad_(true);
  const auto x2 = x.detach().clone().requires_grad_(true);
  const auto fused = rope_bthd(x, cos, sin);
  const auto ref = apply_rope(x2.transpose(1, 2), cos, sin).transpose(1, 2);
  EXPECT_TRUE(at::equal(fused, ref));
  const auto g = at::randn({B, T, H, D});
  fused.backward(g);
  ref.backward(g);
  EXPECT_TRUE(at::equal(x.grad(), x2.grad()));
  // The backward is the transpose of the rotation: <R x, g> = <x, R^T g> in double.
  const double lhs = (fused.detach().to(at::kDouble) * g.to(at::kDouble)).sum().item<double>();
  const double rhs = (x.detach().to(at::kDouble) * x.grad().to(at::kDouble)).sum().item<double>();
  EXPECT_NEAR(lhs, rhs, 1e-4 * (std::abs(lhs) + 1));
}

TEST(ReluSquared, FusedPassEqualsDoubleDefinitionAndKeepsNaN) {
  // Values by hand: relu(x)^2 and d/dx = 2 relu(x) (0 for x <= 0). Each output is one rounding of an
  // exact double value (r * r, g * 2r), so float results equal the rounded double ones exactly.
  const auto x = at::tensor({-2.0f, -0.0f, 0.0f, 0.5f, 3.0f, 1e20f, std::nanf("")}).requires_grad_(true);
  const auto y = relu_squared(x);
  const std::vector<double> want = {0.0, 0.0, 0.0, 0.25, 9.0, 1e40};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(y[i].item<float>(), static_cast<float>(want[i])) << i;
  EXPECT_TRUE(std::isinf(y[5].item<float>()));  // 1e40 overflows float, as at::relu(x) * at::relu(x) does
  EXPECT_TRUE(std::isnan(y[6].item<float>()));  // NaN reaches the trainer's finiteness check
  y.backward(at::tensor({1.0f, 1.0f, 1.0f, 3.0f, -0.5f, 0.0f, 1.0f}));
  const auto g = x.grad();
  EXPECT_EQ(g[0].item<float>(), 0.0f);
  EXPECT_EQ(g[3].item<float>(), 3.0f);   // 3 * 2 * 0.5
  EXPECT_EQ(g[4].item<float>(), -3.0f);  // -0.5 * 2 * 3
  EXPECT_TRUE(std::isnan(g[6].item<float>()));

  // The fused CPU pass (float32, many threads' worth of elements, a non-contiguous input) against the
  // ATen path (double) rounded to float.
  at::manual_seed(5);
  const auto big = at::randn({300, 700}).t().requires_grad_(true);  // non-contiguous
  const auto bd = big.detach().to(at::kDouble).requires_grad_(true);
  const auto yf = relu_squared(big);
  const auto yd = relu_squared(bd);
  EXPECT_TRUE(at::equal(yf, yd.to(at::kFloat)));
  const auto go = at::randn({700, 300});
  yf.backward(go);
  yd.backward(go.to(at::kDouble));
  EXPECT_TRUE(at::equal(big.grad(), bd.grad().to(at::kFloat)));
}

TEST(BitLM, KVCacheMatchesFullRecompute) {
  at::manual_seed(4);
  BitLM lm(tiny(2), QuantSpec{}, S{"*"}, S{});
  lm->eval();
  const auto tokens = at::randint(0, 50, {1, 10}, at::kLong);
  const auto full = lm->forward(tokens);
  KVCache cache;
  const auto first = lm->forward(tokens.narrow(1, 0, 6), &cache);
  const auto second = lm->forward(tokens.narrow(1, 6, 3), &cache);
  const auto third = lm->forward(tokens.narrow(1, 9, 1), &cache);
  EXPECT_EQ(cache.pos, 10);
  EXPECT_TRUE(at::cat({first, second, third}, 1).allclose(full, 1e-4, 1e-4));
}

// With head size 16 the whole-sequence forward runs the CPU attention kernels (models/attention.hpp;
// on AVX-512) and the cached path ATen's attention: the two agree, and the kernels' node is in the
// graph exactly when the dispatch says so.
TEST(BitLM, AttentionKernelsMatchTheCachedPath) {
  at::manual_seed(5);
  auto c = tiny(2);
  c.dim = 64;  // 4 heads of 16
  BitLM lm(c, QuantSpec{}, S{"*"}, S{});
  const auto tokens = at::randint(0, 50, {2, 12}, at::kLong);
  const auto full = lm->forward(tokens);
  std::vector<torch::autograd::Node*> todo{full.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  int kernel_nodes = 0;
  while (!todo.empty()) {
    auto* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    kernel_nodes += n->name().find("CausalAttentionFn") != std::string::npos;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  const auto h = at::zeros({2, 12, 4, 16});
  EXPECT_EQ(kernel_nodes, causal_attention_uses_cpu_kernels(h, h, h) ? 2 : 0);  // one per layer
  lm->eval();
  at::NoGradGuard no_grad;
  KVCache cache;
  const auto first = lm->forward(tokens.narrow(1, 0, 7), &cache);
  const auto second = lm->forward(tokens.narrow(1, 7, 5), &cache);
  EXPECT_TRUE(at::cat({first, second}, 1).allclose(full.detach(), 1e-4, 1e-4));
}

TEST(BitLM, FfnKindsUntiedHeadAndConfigErrors) {
  for (const auto kind : {bitqat::models::Ffn::kRelu2, bitqat::models::Ffn::kRelu2Glu, bitqat::models::Ffn::kSwiglu}) {
    auto c = tiny();
    c.ffn = kind;
    c.tie_embeddings = false;
    BitLM lm(c, QuantSpec{}, S{"*"}, S{});
    EXPECT_EQ(lm->named_parameters().contains("layers.0.ffn.gate.weight"), kind != bitqat::models::Ffn::kRelu2);
    EXPECT_TRUE(lm->named_parameters().contains("lm_head.weight"));
    EXPECT_EQ(lm->loss(at::zeros({1, 4}, at::kLong), at::ones({1, 4}, at::kLong)).dim(), 0);
  }
  auto err = [](const std::string& y) {
    try {
      LMConfig::from_yaml(Node::load_string(y, "m.yaml").child("model"));
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(err("model: {dim: 30, n_heads: 4}"), "m.yaml:1: model.n_heads = 4: expected a divisor of model.dim = 30");
  EXPECT_EQ(err("model: {dim: 32, n_heads: 4, n_kv_heads: 3}"),
            "m.yaml:1: model.n_kv_heads = 3: expected a divisor of model.n_heads = 4");
  EXPECT_EQ(err("model: {ffn: gelu}"), "m.yaml:1: model.ffn = gelu: expected one of relu2|relu2_glu|swiglu");
  EXPECT_EQ(
      err("model: {layers: 3}"),
      "m.yaml:1: model.layers: unknown key 'layers'; expected one of: dim, ffn, ffn_dim, init_std, kind, max_seq_len, "
      "n_heads, n_kv_heads, n_layers, norm_eps, rope_theta, sub_norm, tie_embeddings, vocab_size");
}

// Settings that GGUF stores as float32 compare at float32 precision: the float32 nearest 1e-5, as a
// config.json converted from a GGUF writes it, is the same setting as 1e-5; a different float is not.
TEST(LMConfig, FloatSettingsCompareAtFloat32Precision) {
  LMConfig a = tiny(2), b = tiny(2);
  a.norm_eps = 1e-5;
  b.norm_eps = 9.999999747378752e-06;  // static_cast<double>(1e-5f)
  a.rope_theta = b.rope_theta = 100000;
  EXPECT_TRUE(a.differences(b).empty());
  b.norm_eps = std::nextafter(1e-5f, 1.0f);  // the next float32 up: another setting
  ASSERT_EQ(a.differences(b).size(), 1u);
  EXPECT_EQ(a.differences(b)[0].rfind("model.norm_eps = 1e-05 (source: 1.0000001e-05)", 0), 0u) << a.differences(b)[0];
  b = a;
  b.rope_theta = 100000.003;  // nearer to 100000 than to the next float32 (100000.0078125): the same float
  EXPECT_TRUE(a.differences(b).empty());
  b.rope_theta = 500000;
  EXPECT_EQ(a.differences(b), std::vector<std::string>{"model.rope_theta = 100000 (source: 500000)"});
}

// forward_hidden is forward (the same logits, bit for bit) plus the residual stream after the chosen
// blocks: block 1's output is the input of the final norm, so norm(hidden) through the head gives
// the logits again.
TEST(BitLM, ForwardHiddenGivesTheResidualStreamOfChosenBlocks) {
  at::manual_seed(4);
  BitLM lm(tiny(2), QuantSpec{}, S{"layers.*"}, S{});
  const auto tokens = at::randint(0, 50, {2, 6}, at::kLong);
  std::vector<at::Tensor> hidden;
  const auto logits = lm->forward_hidden(tokens, {1, 0}, &hidden);
  EXPECT_TRUE(logits.equal(lm->forward(tokens)));
  ASSERT_EQ(hidden.size(), 2u);
  EXPECT_EQ(hidden[0].sizes(), (std::vector<int64_t>{2, 6, 32}));
  const auto again = at::linear(lm->norm->forward(hidden[0]), lm->embed->weight);
  EXPECT_TRUE(again.allclose(logits, 1e-5, 1e-5));
  EXPECT_FALSE(hidden[1].equal(hidden[0]));
}

// At lambdas 1 on the CPU the block's norms, relu^2 and the SubLNs run inside the fused linears
// (BitLinear::fused_forward), which must really run here (not fall back). The FFN's graph is then the
// composed modules' graph bit for bit, forward and backward: each fused node has one weight, so it
// runs the same kernels in the same order. q/k/v (grouped-query: k and v narrower than q) share one
// node: outputs and weight gradients are the composed ones' bits (the input's gradient is summed in
// another order; tests/bitlinear/quantized_linear_test.cpp bounds it).
TEST(BitLM, FusedBlockPathsEqualTheComposedModules) {
  using namespace bitqat::bitlinear;
  at::manual_seed(3);
  BitLM lm(tiny(2), QuantSpec{}, S{"*"}, S{});
  auto& b = lm->blocks[0];
  auto up = b->ffn->up;
  auto down = b->ffn->down;
  {
    at::NoGradGuard no_grad;  // norm weights other than the initial ones
    for (auto* w : {&b->ffn_norm->weight, &down->norm->weight, &b->attn_norm->weight}) w->uniform_(0.5, 1.5);
  }
  const auto x = (at::randn({2, 8, 32}) * 2).requires_grad_();
  const auto up_grad = at::randn({2, 8, 32});
  InputNorm ffn_pre{b->ffn_norm->weight, b->ffn_norm->eps, false};
  EXPECT_EQ(BitLinearImpl::fused_forward({up.get()}, x, ffn_pre).size(), 1u);
  InputNorm act;
  act.relu2 = true;
  EXPECT_EQ(BitLinearImpl::fused_forward({down.get()}, at::randn({2, 8, 64}), act).size(), 1u);
  const auto ffn_params = std::vector<at::Tensor>{x, b->ffn_norm->weight, up->weight, down->weight, down->norm->weight};
  auto grads = [&](const at::Tensor& y, const std::vector<at::Tensor>& params) {
    for (auto p : params) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
    (y.dim() == 0 ? y : (y * up_grad.narrow(-1, 0, y.size(-1))).sum()).backward();
    std::vector<at::Tensor> g;
    for (const auto& p : params) g.push_back(p.grad().clone());
    return g;
  };
  const auto y_fused = b->ffn->forward(x, b->ffn_norm.get());
  const auto g_fused = grads(y_fused, ffn_params);
  const auto u = quantized_linear(b->ffn_norm->forward_float(x), up->weight, up->bias, up->options.quant.weight,
                                  up->options.quant.act);
  const auto y = quantized_linear(down->norm->forward_float(relu_squared(u)), down->weight, down->bias,
                                  down->options.quant.weight, down->options.quant.act);
  const auto g = grads(y, ffn_params);
  EXPECT_TRUE(y_fused.equal(y));
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(g_fused[i].equal(g[i])) << "gradient " << i;
  EXPECT_GT(g[0].abs().max().item<float>(), 0.0f);

  auto a = b->attn;
  const std::vector<BitLinearImpl*> qkv{a->q.get(), a->k.get(), a->v.get()};
  const auto fused = BitLinearImpl::fused_forward(qkv, x, InputNorm{b->attn_norm->weight, b->attn_norm->eps, false});
  ASSERT_EQ(fused.size(), 3u);
  const auto xn = b->attn_norm->forward_float(x);
  const std::vector<at::Tensor> wqkv{a->q->weight, a->k->weight, a->v->weight};
  at::Tensor lf = at::zeros({}), lw = at::zeros({});
  for (size_t i = 0; i < 3; ++i) {
    const auto& l = *qkv[i];
    const auto want = quantized_linear(xn, l.weight, l.bias, l.options.quant.weight, l.options.quant.act);
    EXPECT_TRUE(fused[i].equal(want)) << "projection " << i;
    lf = lf + (fused[i] * up_grad.narrow(-1, 0, want.size(-1))).sum();
    lw = lw + (want * up_grad.narrow(-1, 0, want.size(-1))).sum();
  }
  EXPECT_EQ(fused[1].size(-1), 16);
  const auto gf = grads(lf, wqkv), gw = grads(lw, wqkv);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(gf[i].equal(gw[i])) << "projection " << i;
}
