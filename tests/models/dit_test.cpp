// BitDiT (models/dit.hpp): the forward pass against a naive double-precision implementation written
// from the DiT paper's equations (explicit patch vectors, layer norms, softmax attention, GELU and
// un-patching by index) at lambda 0, adaLN-Zero's zero output at initialisation, the position and
// timestep tables by hand, and config validation.
#include "models/dit.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"

using namespace bitqat;
using S = std::vector<std::string>;
using models::BitDiT;
using models::DiTConfig;

namespace {

DiTConfig small_config() {
  DiTConfig c;
  c.channels = 2;
  c.height = 6;
  c.width = 4;
  c.patch_size = 2;
  c.dim = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.mlp_dim = 12;
  c.num_classes = 3;
  c.freq_dim = 6;
  return c;
}

bitlinear::QuantSpec ternary() {
  bitlinear::QuantSpec s;  // ternary per tensor, 8-bit per-token activations
  return s;
}

using T = at::Tensor;

// Layer norm without affine parameters over the last dim, from its definition (population variance).
T naive_ln(const T& x, double eps) {
  const auto mu = x.mean(-1, true);
  const auto var = (x - mu).square().mean(-1, true);
  return (x - mu) / (var + eps).sqrt();
}

T naive_rms(const T& x, const T& w, double eps) { return x / (x.square().mean(-1, true) + eps).sqrt() * w; }

T naive_gelu_tanh(const T& x) { return 0.5 * x * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3)))); }

T lin(const T& x, const T& w, const T& b) { return at::matmul(x, w.t()) + b; }

// The DiT of models/dit.hpp's header comment, one equation at a time.
T naive_dit(models::BitDiTImpl& m, const T& x, const T& t, const T& y) {
  const auto& c = m.config;
  const int64_t B = x.size(0), p = c.patch_size, gh = c.height / p, gw = c.width / p, D = c.dim;
  // Patch vectors in the conv weight's (channel, row, column) order, patches row-major.
  std::vector<T> patches;
  for (int64_t r = 0; r < gh; ++r) {
    for (int64_t q = 0; q < gw; ++q)
      patches.push_back(x.slice(2, r * p, r * p + p).slice(3, q * p, q * p + p).reshape({B, -1}));
  }
  auto h = lin(at::stack(patches, 1), m.patch_embed->weight.reshape({D, -1}), m.patch_embed->bias) + m.pos_embed;
  // Timestep features: cos then sin of 1000 t 10000^(-i / half).
  const int64_t half = c.freq_dim / 2;
  auto feats = at::zeros({B, c.freq_dim}, x.options());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = 1000.0 * t[b].item<double>() * std::pow(10000.0, -static_cast<double>(i) / half);
      feats[b][i] = std::cos(a);
      feats[b][half + i] = std::sin(a);
    }
  }
  auto cvec = lin(at::silu(lin(feats, m.t_fc1->weight, m.t_fc1->bias)), m.t_fc2->weight, m.t_fc2->bias) +
              m.y_embed->weight.index_select(0, y);
  const auto sc = at::silu(cvec);
  const int64_t H = c.n_heads, hd = D / H, Tn = gh * gw;
  for (auto& blk : m.blocks) {
    const auto mod = lin(sc, blk->adaln->weight, blk->adaln->bias);  // [B, 6D]
    auto part = [&](int k) { return mod.slice(1, k * D, (k + 1) * D).unsqueeze(1); };
    auto a_in = naive_ln(h, c.norm_eps) * (1 + part(1)) + part(0);
    const auto qkv = lin(a_in, blk->qkv->weight, blk->qkv->bias);  // [B, T, 3D]: q, k, v; heads inside
    auto attn = at::zeros({B, Tn, D}, x.options());
    for (int64_t hh = 0; hh < H; ++hh) {
      const auto q = qkv.slice(2, hh * hd, (hh + 1) * hd);
      const auto k = qkv.slice(2, D + hh * hd, D + (hh + 1) * hd);
      const auto v = qkv.slice(2, 2 * D + hh * hd, 2 * D + (hh + 1) * hd);
      const auto s = at::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(hd));
      const auto e = (s - std::get<0>(s.max(-1, true))).exp();
      attn.slice(2, hh * hd, (hh + 1) * hd).copy_(at::matmul(e / e.sum(-1, true), v));
    }
    if (c.sub_norm) attn = naive_rms(attn, blk->proj->norm->weight, c.norm_eps);
    h = h + part(2) * lin(attn, blk->proj->weight, blk->proj->bias);
    const auto m_in = naive_ln(h, c.norm_eps) * (1 + part(4)) + part(3);
    auto f = naive_gelu_tanh(lin(m_in, blk->fc1->weight, blk->fc1->bias));
    if (c.sub_norm) f = naive_rms(f, blk->fc2->norm->weight, c.norm_eps);
    h = h + part(5) * lin(f, blk->fc2->weight, blk->fc2->bias);
  }
  const auto fm = lin(sc, m.final_adaln->weight, m.final_adaln->bias);
  const auto out =
      lin(naive_ln(h, c.norm_eps) * (1 + fm.slice(1, D, 2 * D).unsqueeze(1)) + fm.slice(1, 0, D).unsqueeze(1),
          m.final_linear->weight, m.final_linear->bias);  // [B, T, p p C], channels last
  auto img = at::zeros({B, c.channels, c.height, c.width}, x.options());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < gh; ++r) {
      for (int64_t q = 0; q < gw; ++q) {
        for (int64_t i = 0; i < p; ++i) {
          for (int64_t j = 0; j < p; ++j) {
            for (int64_t ch = 0; ch < c.channels; ++ch) {
              img[b][ch][r * p + i][q * p + j] = out[b][r * gw + q][(i * p + j) * c.channels + ch];
            }
          }
        }
      }
    }
  }
  return img;
}

// Every parameter random (adaLN-Zero would make the blocks the identity and hide them).
void randomize(torch::nn::Module& m) {
  at::NoGradGuard g;
  for (auto& p : m.parameters()) p.normal_(0.0, 0.3);
}

}  // namespace

// lambda 0 is the full-precision function exactly (the straight-through blend adds 0 * (Q(w) - w)),
// so a ternary-configured DiT at lambda 0 in double must equal the naive model. Both sides are the
// same sums in another order: float64 rounding (2^-53 ~ 1.1e-16 per operation) over a few hundred
// operations per output on values of order 10 bounds the difference by about 1e-12; 1e-10 leaves room.
TEST(BitDiT, ForwardMatchesANaiveImplementationAtLambdaZeroInDouble) {
  for (const bool sub_norm : {false, true}) {
    for (const auto pos : {bitqat::models::PosEmbed::kSinusoidal, bitqat::models::PosEmbed::kLearned}) {
      at::manual_seed(3);
      auto c = small_config();
      c.sub_norm = sub_norm;
      c.pos_embed = pos;
      c.quantize_patch_embed = true;
      BitDiT m(c, ternary(), S{"*"}, S{});
      EXPECT_EQ(bitlinear::quantized_layer_names(*m).size(), 1u + 5u * 2u);  // patch_embed + 5 per block
      randomize(*m);
      m->to(at::kDouble);
      bitlinear::set_quant_lambdas(*m, 0.0, 0.0);
      const auto x = at::randn({3, 2, 6, 4}, at::kDouble);
      const auto t = at::tensor({0.0, 0.37, 1.0}, at::kDouble);
      const auto y = at::tensor({0, 3, 2}, at::kLong);  // 3 = the null label
      at::NoGradGuard g;
      const auto got = m->forward(x, t, y);
      const auto want = naive_dit(*m, x, t, y);
      ASSERT_EQ(got.sizes(), want.sizes());
      const double err = (got - want).abs().max().item<double>();
      EXPECT_LT(err, 1e-10) << "sub_norm " << sub_norm << ", " << core::name_of(bitqat::models::kPosEmbedNames, pos);
      EXPECT_GT(want.abs().max().item<double>(), 0.1);  // not a trivially zero output
    }
  }
}

// At lambda 1 the same weights compute something else (ternary weights, 8-bit activations).
TEST(BitDiT, LambdaOneQuantizesTheSelectedLinears) {
  at::manual_seed(4);
  BitDiT m(small_config(), ternary(), S{"blocks.*"}, S{"*.adaln"});
  EXPECT_EQ(bitlinear::quantized_layer_names(*m),
            (std::vector<std::string>{"blocks.0.qkv", "blocks.0.proj", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.qkv",
                                      "blocks.1.proj", "blocks.1.fc1", "blocks.1.fc2"}));
  randomize(*m);
  const auto x = at::randn({2, 2, 6, 4});
  const auto t = at::tensor({0.2f, 0.9f});
  const auto y = at::tensor({1, 2}, at::kLong);
  at::NoGradGuard g;
  bitlinear::set_quant_lambdas(*m, 0.0, 0.0);
  const auto fp = m->forward(x, t, y);
  bitlinear::set_quant_lambdas(*m, 1.0, 1.0);
  const auto q = m->forward(x, t, y);
  EXPECT_GT((fp - q).abs().max().item<double>(), 1e-3);
}

// adaLN-Zero: zero adaln and final layers make the first output exactly 0, whatever the input.
TEST(BitDiT, AdaLNZeroStartsAtZero) {
  at::manual_seed(5);
  BitDiT m(small_config(), ternary(), S{"*"}, S{});
  for (const auto& b : m->blocks) EXPECT_EQ(b->adaln->weight.abs().max().item<double>(), 0.0);
  at::NoGradGuard g;
  const auto v = m->forward(at::randn({2, 2, 6, 4}), at::tensor({0.1f, 0.6f}), at::tensor({0, 1}, at::kLong));
  EXPECT_EQ(v.abs().max().item<double>(), 0.0);
  EXPECT_EQ(m->named_parameters().contains("pos_embed"), false);  // sinusoidal: a buffer
  EXPECT_EQ(m->named_buffers().contains("pos_embed"), true);
  for (const char* n : {"patch_embed.weight", "t_fc1.weight", "t_fc2.weight", "y_embed.weight", "blocks.1.adaln.weight",
                        "blocks.0.qkv.weight", "blocks.0.proj.bias", "blocks.1.fc1.weight", "blocks.1.fc2.weight",
                        "final_adaln.weight", "final_linear.bias"}) {
    EXPECT_TRUE(m->named_parameters().contains(n)) << n;
  }
  EXPECT_EQ(m->y_embed->weight.size(0), 4);  // 3 classes + the null label
}

// Row r, column q of a 2 x 3 grid with dim 4 (one frequency, w_0 = 1): [sin r, cos r, sin q, cos q].
TEST(BitDiT, SineCosinePositionTableByHand) {
  const auto tab = models::sincos_position_table(2, 3, 4);
  ASSERT_EQ(tab.sizes(), (std::vector<int64_t>{6, 4}));
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t q = 0; q < 3; ++q) {
      const auto row = tab[r * 3 + q];
      EXPECT_DOUBLE_EQ(row[0].item<double>(), std::sin(r));
      EXPECT_DOUBLE_EQ(row[1].item<double>(), std::cos(r));
      EXPECT_DOUBLE_EQ(row[2].item<double>(), std::sin(q));
      EXPECT_DOUBLE_EQ(row[3].item<double>(), std::cos(q));
    }
  }
  EXPECT_THROW(models::sincos_position_table(2, 2, 6), std::invalid_argument);
}

// dim 4: frequencies 1 and 10000^(-1/2) = 0.01; t = 0.5 gives arguments 500 and 5.
TEST(BitDiT, TimestepFeaturesByHand) {
  const auto f = models::timestep_features(at::tensor({0.5}, at::kDouble), 4);
  EXPECT_NEAR(f[0][0].item<double>(), std::cos(500.0), 1e-12);
  EXPECT_NEAR(f[0][1].item<double>(), std::cos(5.0), 1e-12);
  EXPECT_NEAR(f[0][2].item<double>(), std::sin(500.0), 1e-12);
  EXPECT_NEAR(f[0][3].item<double>(), std::sin(5.0), 1e-12);
}

TEST(DiTConfig, RejectsShapesThatDoNotFit) {
  auto err = [](const std::string& yaml) {
    try {
      DiTConfig::from_yaml(core::Node::load_string(yaml, "m.yaml").child("model"));
    } catch (const core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(err("model: {kind: dit, patch_size: 5}"),
            "m.yaml:1: model.patch_size = 5: expected a divisor of model.height = 28 and model.width = 28");
  EXPECT_EQ(err("model: {kind: dit, dim: 100, n_heads: 3}"),
            "m.yaml:1: model.n_heads = 3: expected a divisor of model.dim = 100");
  EXPECT_NE(err("model: {kind: dit, dim: 6, n_heads: 2}").find("model.dim = 6: expected a multiple of 4"),
            std::string::npos);
  EXPECT_NE(err("model: {kind: dit, class_dropout: 1}").find("model.class_dropout = 1: expected a fraction in [0, 1)"),
            std::string::npos);
  EXPECT_NE(err("model: {kind: dit, depth: 3}").find("depth"), std::string::npos);
  const auto ts = err("model: {kind: dit, time_sampling: lognormal}");
  EXPECT_NE(ts.find("model.time_sampling = lognormal"), std::string::npos) << ts;
  EXPECT_NE(ts.find("logit_normal"), std::string::npos) << ts;
  EXPECT_NE(err("model: {kind: dit, logit_std: 0}").find("model.logit_std = 0"), std::string::npos);
  EXPECT_EQ(err("model: {kind: dit, time_sampling: logit_normal, logit_mean: 0.5}"), "(no error)");
  EXPECT_EQ(err("model: {kind: dit, dim: 6, n_heads: 2, pos_embed: learned}"), "(no error)");
}
