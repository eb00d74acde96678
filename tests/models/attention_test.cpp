// The CPU causal attention kernels (models/cpu/attention_kernels.hpp) and the autograd node on them
// (models/attention.hpp) against a double-precision reference computed here by plain loops, with an
// error bound derived per element (first order in u = 2^-24, then 1% slack for the second-order
// terms). Every instruction-set variant this CPU runs is checked, as the variants round differently
// (FMA contraction).
#include "models/attention.hpp"

#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/cpu_isa.hpp"
#include "models/cpu/attention_kernels.hpp"

using namespace bitqat::models;

namespace {

constexpr double kU = 1.0 / (1 << 24);  // float32 unit roundoff
double gamma_n(double n) { return n * kU / (1.0 - n * kU); }
// The kernels' exp: relative error 4u (Cody-Waite reduction exact to u |r|, Cephes' polynomial about
// 2 ulp on |r| <= ln2 / 2, 2^n exact).
constexpr double kExpErr = 4 * kU;

struct Result {
  at::Tensor o, lse, dq, dk, dv;  // double
};
struct Reference {
  Result value, bound;
  double min_exp_arg = 0.0;  // the smallest s_ij - max_j s_ij over the causal part
};

// Reference values and per-element bounds for q [B, T, H, d], k and v [B, T, Hkv, d] and the output
// gradient g [B, T, H, d] (all float32).
Reference reference(const at::Tensor& q32, const at::Tensor& k32, const at::Tensor& v32, const at::Tensor& g32) {
  const auto q = q32.to(at::kDouble).contiguous(), k = k32.to(at::kDouble).contiguous();
  const auto v = v32.to(at::kDouble).contiguous(), g = g32.to(at::kDouble).contiguous();
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hkv = k.size(2), group = H / Hkv;
  const double scale = static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))));
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  Reference r;
  for (auto* res : {&r.value, &r.bound}) {
    res->o = at::zeros({B, T, H, d}, opt);
    res->lse = at::zeros({B, H, T}, opt);
    res->dq = at::zeros({B, T, H, d}, opt);
    res->dk = at::zeros({B, T, Hkv, d}, opt);
    res->dv = at::zeros({B, T, Hkv, d}, opt);
  }
  auto Q = q.accessor<double, 4>(), K = k.accessor<double, 4>(), V = v.accessor<double, 4>(),
       G = g.accessor<double, 4>();
  auto O = r.value.o.accessor<double, 4>(), BO = r.bound.o.accessor<double, 4>();
  auto L = r.value.lse.accessor<double, 3>(), BL = r.bound.lse.accessor<double, 3>();
  auto DQ = r.value.dq.accessor<double, 4>(), BDQ = r.bound.dq.accessor<double, 4>();
  auto DK = r.value.dk.accessor<double, 4>(), DV = r.value.dv.accessor<double, 4>();
  // dk, dv: first-order error sums and absolute sums, finished once all terms are in.
  auto ek = at::zeros({B, T, Hkv, d}, opt), ak = at::zeros({B, T, Hkv, d}, opt);
  auto ev = at::zeros({B, T, Hkv, d}, opt), av = at::zeros({B, T, Hkv, d}, opt);
  auto EK = ek.accessor<double, 4>(), AK = ak.accessor<double, 4>(), EV = ev.accessor<double, 4>(),
       AV = av.accessor<double, 4>();
  std::vector<double> s(T * T), es(T * T), P(T * T), pi(T * T), dS(T * T), eds(T * T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / group;
      for (int64_t i = 0; i < T; ++i) {
        // Scores: a dot of d products (FMA or not: gamma_d) times scale (one rounding).
        double m = -INFINITY, E = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0.0, adot = 0.0;
          for (int64_t c = 0; c < d; ++c) {
            dot += Q[b][i][h][c] * K[b][j][kh][c];
            adot += std::fabs(Q[b][i][h][c] * K[b][j][kh][c]);
          }
          s[i * T + j] = scale * dot;
          es[i * T + j] = gamma_n(d) * scale * adot + kU * std::fabs(scale * dot);
          m = std::max(m, s[i * T + j]);
          E = std::max(E, es[i * T + j]);
        }
        // Softmax: exp(s - max) with the max off by at most E; relative error rho of each term.
        double l = 0.0, R = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          P[i * T + j] = std::exp(s[i * T + j] - m);
          r.min_exp_arg = std::min(r.min_exp_arg, s[i * T + j] - m);
          l += P[i * T + j];
          R = std::max(R, es[i * T + j] + E + kU * std::fabs(s[i * T + j] - m) + kExpErr);
        }
        for (int64_t j = 0; j <= i; ++j) P[i * T + j] /= l;
        const double lse = m + std::log(l);
        L[b][h][i] = lse;
        // l's relative error R + gamma_{i+1}; log adds about an ulp of log l, the sum an ulp of lse.
        BL[b][h][i] = 1.01 * (E + R + gamma_n(i + 1) + 2 * kU * std::fabs(std::log(l)) + kU * std::fabs(lse)) + 1e-30;
        for (int64_t c = 0; c < d; ++c) {
          double o = 0.0, ao = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            o += P[i * T + j] * V[b][j][kh][c];
            ao += P[i * T + j] * std::fabs(V[b][j][kh][c]);
          }
          O[b][i][h][c] = o;
          // Numerator and 1 / l each off by R + gamma_{i+1} relative; the reciprocal and the product round once each.
          BO[b][i][h][c] = 1.01 * (2 * R + 2 * gamma_n(i + 1) + 2 * kU) * ao + 1e-30;
        }
        // Backward: P recomputed as exp(s - lse) from the float lse.
        double D = 0.0, eD = 0.0;
        for (int64_t c = 0; c < d; ++c) {
          D += G[b][i][h][c] * O[b][i][h][c];
          eD += gamma_n(d) * std::fabs(G[b][i][h][c] * O[b][i][h][c]) + std::fabs(G[b][i][h][c]) * BO[b][i][h][c];
        }
        for (int64_t j = 0; j <= i; ++j) {
          pi[i * T + j] = es[i * T + j] + BL[b][h][i] + kU * std::fabs(s[i * T + j] - lse) + kExpErr;
          double dp = 0.0, adp = 0.0;
          for (int64_t c = 0; c < d; ++c) {
            dp += G[b][i][h][c] * V[b][j][kh][c];
            adp += std::fabs(G[b][i][h][c] * V[b][j][kh][c]);
          }
          const double w = dp - D, ew = gamma_n(d) * adp + eD + kU * std::fabs(w);
          const double p = P[i * T + j];
          dS[i * T + j] = scale * p * w;
          eds[i * T + j] = scale * (pi[i * T + j] * p * std::fabs(w) + p * ew + 2 * kU * p * std::fabs(w));
        }
        for (int64_t c = 0; c < d; ++c) {
          double dq = 0.0, e = 0.0, a = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            dq += dS[i * T + j] * K[b][j][kh][c];
            e += eds[i * T + j] * std::fabs(K[b][j][kh][c]);
            a += std::fabs(dS[i * T + j] * K[b][j][kh][c]);
          }
          DQ[b][i][h][c] = dq;
          BDQ[b][i][h][c] = 1.01 * (e + gamma_n(i + 1) * a) + 1e-30;
        }
      }
      for (int64_t j = 0; j < T; ++j) {
        for (int64_t c = 0; c < d; ++c) {
          for (int64_t i = j; i < T; ++i) {
            const double ds = dS[i * T + j], p = P[i * T + j];
            DK[b][j][kh][c] += ds * Q[b][i][h][c];
            EK[b][j][kh][c] += eds[i * T + j] * std::fabs(Q[b][i][h][c]);
            AK[b][j][kh][c] += std::fabs(ds * Q[b][i][h][c]);
            DV[b][j][kh][c] += p * G[b][i][h][c];
            EV[b][j][kh][c] += pi[i * T + j] * p * std::fabs(G[b][i][h][c]);
            AV[b][j][kh][c] += p * std::fabs(G[b][i][h][c]);
          }
        }
      }
    }
  }
  // dk, dv of key j: (T - j) terms per query head, and one more rounding per head added in.
  const auto terms = (T - at::arange(T, opt) + 1).mul(group).view({1, T, 1, 1});
  const auto gam = terms * kU / (1 - terms * kU);
  r.bound.dk = 1.01 * (ek + gam * ak) + 1e-30;
  r.bound.dv = 1.01 * (ev + gam * av) + 1e-30;
  return r;
}

// Every (batch, head) pair through one variant's raw kernels, as the autograd node calls them.
// scale_factor != 1 mutates the kernels' input (to show the bounds catch a 0.1% error).
Result run_kernels(const bitqat::models::cpu::AttentionKernels& kern, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& g, double scale_factor = 1.0) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hkv = k.size(2), group = H / Hkv;
  const float scale = static_cast<float>(scale_factor / std::sqrt(static_cast<double>(d)));
  Result r;
  r.o = at::full({B, T, H, d}, NAN);
  r.lse = at::full({B, H, T}, NAN);
  r.dq = at::full({B, T, H, d}, NAN);
  r.dk = at::full({B, T, Hkv, d}, NAN);
  r.dv = at::full({B, T, Hkv, d}, NAN);
  // Work memory refilled with NaN before every call: the kernels must not read what they did not write.
  std::vector<float> buf(bitqat::models::cpu::attention_work_floats(T, d));
  auto work = [&] {
    std::fill(buf.begin(), buf.end(), NAN);
    return buf.data();
  };
  auto at_ = [](const at::Tensor& t, int64_t b, int64_t h) {
    return t.data_ptr<float>() + b * t.stride(0) + h * t.stride(2);
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      kern.forward(at_(q, b, h), q.stride(1), at_(k, b, h / group), k.stride(1), at_(v, b, h / group), v.stride(1), T,
                   d, scale, at_(r.o, b, h), r.o.stride(1), r.lse.data_ptr<float>() + (b * H + h) * T, work());
    }
    for (int64_t kh = 0; kh < Hkv; ++kh) {
      for (int64_t j = 0; j < group; ++j) {
        const int64_t h = kh * group + j;
        kern.backward(at_(q, b, h), q.stride(1), at_(k, b, kh), k.stride(1), at_(v, b, kh), v.stride(1), at_(r.o, b, h),
                      r.o.stride(1), at_(g, b, h), g.stride(1), r.lse.data_ptr<float>() + (b * H + h) * T, T, d, scale,
                      at_(r.dq, b, h), r.dq.stride(1), at_(r.dk, b, kh), r.dk.stride(1), at_(r.dv, b, kh),
                      r.dv.stride(1), j > 0, work());
      }
    }
  }
  return r;
}

// The largest |got - want| / bound (> 1: outside the bound; NaN counts as outside).
double worst_ratio(const at::Tensor& got, const at::Tensor& want, const at::Tensor& bound) {
  const double w = ((got.to(at::kDouble) - want).abs() / bound).max().item<double>();
  return std::isnan(w) ? INFINITY : w;
}

void expect_within(const at::Tensor& got, const at::Tensor& want, const at::Tensor& bound, const std::string& what) {
  EXPECT_LE(worst_ratio(got, want, bound), 1.0)
      << what << ": error " << (got.to(at::kDouble) - want).abs().max().item<double>() << ", largest bound "
      << bound.max().item<double>();
}

void expect_result(const Result& got, const Reference& ref, const std::string& what) {
  expect_within(got.o, ref.value.o, ref.bound.o, what + " o");
  if (got.lse.defined()) expect_within(got.lse, ref.value.lse, ref.bound.lse, what + " lse");
  expect_within(got.dq, ref.value.dq, ref.bound.dq, what + " dq");
  expect_within(got.dk, ref.value.dk, ref.bound.dk, what + " dk");
  expect_within(got.dv, ref.value.dv, ref.bound.dv, what + " dv");
}

// [B, T, heads, d] with rows wider than d (strided like a projection's slice), values ~ N(0, sd).
at::Tensor strided(int64_t B, int64_t T, int64_t H, int64_t d, double sd) {
  return (at::randn({B, T, H, d + 16}) * sd).narrow(3, 0, d);
}

}  // namespace

TEST(CausalAttentionKernels, EveryVariantWithinTheDerivedBound) {
  at::manual_seed(11);
  struct Shape {
    int64_t B, T, H, Hkv, d;
  };
  // T around the 8-row and 16-column tiles, every tile height of the products (d / 16 = 1..8).
  const std::vector<Shape> shapes{{1, 1, 1, 1, 16},  {2, 37, 2, 1, 32},  {1, 128, 2, 2, 32},
                                  {1, 70, 3, 3, 48}, {1, 33, 2, 1, 128}, {1, 150, 1, 1, 64},
                                  {1, 17, 2, 2, 80}, {1, 24, 1, 1, 96},  {1, 9, 1, 1, 112}};
  int variants = 0;
  for (const auto isa : bitqat::core::kCpuIsas) {
    const auto* kern = bitqat::models::cpu::attention_kernels_for(isa);
    if (!kern) continue;
    ++variants;
    for (const auto& s : shapes) {
      const auto q = strided(s.B, s.T, s.H, s.d, 1.5), k = strided(s.B, s.T, s.Hkv, s.d, 1.5);
      const auto v = strided(s.B, s.T, s.Hkv, s.d, 1.0), g = strided(s.B, s.T, s.H, s.d, 1.0);
      const auto ref = reference(q, k, v, g);
      expect_result(run_kernels(*kern, q, k, v, g), ref,
                    std::string(kern->isa) + " T=" + std::to_string(s.T) + " d=" + std::to_string(s.d));
    }
  }
  EXPECT_GE(variants, 1);
}

TEST(CausalAttentionKernels, TheBoundsCatchAScaleOffByOnePerMille) {
  // The bounds are worst-case (d u |q||k| per score), so show they are tight enough to matter: the
  // kernels run with the score scale 0.1% off must leave them in o, dq and dk.
  at::manual_seed(15);
  const auto q = strided(1, 64, 2, 32, 1.5), k = strided(1, 64, 1, 32, 1.5);
  const auto v = strided(1, 64, 1, 32, 1.0), g = strided(1, 64, 2, 32, 1.0);
  const auto ref = reference(q, k, v, g);
  const auto& kern = bitqat::models::cpu::attention_kernels();
  const auto good = run_kernels(kern, q, k, v, g), bad = run_kernels(kern, q, k, v, g, 1.001);
  EXPECT_LE(worst_ratio(good.o, ref.value.o, ref.bound.o), 1.0);
  EXPECT_GT(worst_ratio(bad.o, ref.value.o, ref.bound.o), 1.0);
  EXPECT_GT(worst_ratio(bad.dq, ref.value.dq, ref.bound.dq), 1.0);
  EXPECT_GT(worst_ratio(bad.dk, ref.value.dk, ref.bound.dk), 1.0);
  EXPECT_GT(worst_ratio(bad.dv, ref.value.dv, ref.bound.dv), 1.0);
  EXPECT_GT(worst_ratio(bad.lse, ref.value.lse, ref.bound.lse), 1.0);
}

TEST(CausalAttentionKernels, LargeScoresAndUnderflowingTerms) {
  // Peaked softmax rows (scores spanning hundreds: exp arguments far below -87) stay within the bound.
  at::manual_seed(12);
  const auto q = strided(1, 60, 2, 32, 6.0), k = strided(1, 60, 2, 32, 6.0);
  const auto v = strided(1, 60, 2, 32, 1.0), g = strided(1, 60, 2, 32, 1.0);
  const auto ref = reference(q, k, v, g);
  EXPECT_LT(ref.min_exp_arg, -87.0);
  for (const auto isa : bitqat::core::kCpuIsas) {
    if (const auto* kern = bitqat::models::cpu::attention_kernels_for(isa)) {
      expect_result(run_kernels(*kern, q, k, v, g), ref, kern->isa);
    }
  }
}

TEST(CausalAttention, NodeMatchesTheReferenceUnderGroupedQueryAttention) {
  at::manual_seed(13);
  // v a slice of a wider buffer (as the fused q/k/v node's outputs are); 4 query heads on 2 kv heads.
  // causal_attention_cpu: the kernels of this run's instruction set, whichever it is.
  const auto q = (at::randn({2, 45, 4, 32}) * 1.5).requires_grad_();
  const auto k = (at::randn({2, 45, 2, 32}) * 1.5).requires_grad_();
  const auto vbuf = at::randn({2, 45, 2, 48}).requires_grad_();
  const auto v = vbuf.narrow(3, 8, 32);
  const auto o = causal_attention_cpu(q, k, v);
  EXPECT_EQ(o.sizes(), (std::vector<int64_t>{2, 45, 4, 32}));
  ASSERT_TRUE(o.grad_fn());
  EXPECT_NE(o.grad_fn()->name().find("CausalAttentionFn"), std::string::npos) << o.grad_fn()->name();
  const auto go = at::randn({2, 45, 4, 32});
  (o * go).sum().backward();
  const auto ref = reference(q.detach(), k.detach(), v.detach(), go);
  Result got{o.detach(), at::Tensor(), q.grad(), k.grad(), vbuf.grad().narrow(3, 8, 32)};
  expect_result(got, ref, "node");
  // The columns of vbuf outside the slice get zero gradient.
  EXPECT_EQ(vbuf.grad().narrow(3, 0, 8).abs().max().item<float>(), 0.0f);
}

TEST(CausalAttention, NodeTakesPermutedInputsAndBroadcastGradients) {
  at::manual_seed(16);
  // q, k, v permuted from [B, H, T, d] (row stride d, head stride T d); o.sum() sends a gradient
  // expanded from one value (every stride 0).
  const auto q = (at::randn({2, 3, 40, 16}) * 1.5).permute({0, 2, 1, 3}).requires_grad_();
  const auto k = (at::randn({2, 3, 40, 16}) * 1.5).permute({0, 2, 1, 3}).requires_grad_();
  const auto v = at::randn({2, 3, 40, 16}).permute({0, 2, 1, 3}).requires_grad_();
  ASSERT_EQ(q.stride(1), 16);
  const auto o = causal_attention_cpu(q, k, v);
  o.sum().backward();
  const auto ref = reference(q.detach(), k.detach(), v.detach(), at::ones({2, 40, 3, 16}));
  expect_result(Result{o.detach(), at::Tensor(), q.grad(), k.grad(), v.grad()}, ref, "permuted");
}

TEST(CausalAttention, RowsNeverReadLaterKeysOrValues) {
  // An inf key and value at row 12, inside the tile of rows 8..15, must not reach rows 0..11: their
  // outputs and query gradients equal, bit for bit, those of a 12-row sequence (every row sums its
  // own j = 0..i in order either way).
  at::manual_seed(17);
  auto q = at::randn({1, 17, 2, 32}), k = at::randn({1, 17, 2, 32}), v = at::randn({1, 17, 2, 32});
  k.select(1, 12).fill_(INFINITY);
  v.select(1, 12).fill_(-INFINITY);
  auto g = at::randn({1, 17, 2, 32});
  g.narrow(1, 12, 5).zero_();
  auto run = [&](int64_t T) {
    const auto qq = q.narrow(1, 0, T).clone().requires_grad_();
    const auto o = causal_attention_cpu(qq, k.narrow(1, 0, T), v.narrow(1, 0, T));
    (o * g.narrow(1, 0, T)).sum().backward();
    return std::make_pair(o.detach().narrow(1, 0, 12), qq.grad().narrow(1, 0, 12));
  };
  const auto all = run(17), first = run(12);
  EXPECT_TRUE(all.first.isfinite().all().item<bool>());
  EXPECT_TRUE(all.first.equal(first.first));
  EXPECT_TRUE(all.second.isfinite().all().item<bool>());
  EXPECT_TRUE(all.second.equal(first.second));
}

TEST(CausalAttention, NodeRefusesDoubleBackwardAndUnsupportedInputs) {
  const auto q = at::randn({1, 8, 2, 16}).requires_grad_();
  const auto o = causal_attention_cpu(q, q, q);
  const auto g = torch::autograd::grad({o.sum()}, {q}, {}, /*retain_graph=*/true, /*create_graph=*/false);
  EXPECT_EQ(g[0].sizes(), q.sizes());
  EXPECT_THROW(torch::autograd::grad({o.sum()}, {q}, {}, /*retain_graph=*/true, /*create_graph=*/true), c10::Error);
  EXPECT_THROW(causal_attention_cpu(at::randn({1, 8, 2, 24}), at::randn({1, 8, 2, 24}), at::randn({1, 8, 2, 24})),
               c10::Error);  // d not a multiple of 16
  EXPECT_THROW(causal_attention_cpu(q.detach().to(at::kDouble), q.detach().to(at::kDouble), q.detach().to(at::kDouble)),
               c10::Error);
}

TEST(CausalAttention, TrainingShapesRunTheKernelsOnEveryCapability) {
  // The policy of models/attention.hpp, whatever ATEN_CPU_CAPABILITY the suite runs under.
  const auto x = [](int64_t T, int64_t d) { return at::zeros({2, T, 2, d}); };
  EXPECT_TRUE(causal_attention_uses_cpu_kernels(x(128, 32), x(128, 32), x(128, 32)));  // the quickstart's heads
  EXPECT_TRUE(causal_attention_uses_cpu_kernels(x(512, 64), x(512, 64), x(512, 64)));
  EXPECT_TRUE(causal_attention_uses_cpu_kernels(x(128, 128), x(128, 128), x(128, 128)));
  EXPECT_TRUE(causal_attention_uses_cpu_kernels(x(1, 16), x(1, 16), x(1, 16)));
  EXPECT_FALSE(causal_attention_uses_cpu_kernels(x(1024, 32), x(1024, 32), x(1024, 32)));
  EXPECT_FALSE(causal_attention_uses_cpu_kernels(x(256, 128), x(256, 128), x(256, 128)));
}

TEST(CausalAttention, OtherInputsRunScaledDotProductAttention) {
  at::manual_seed(14);
  // Head size 8 (not a multiple of 16), double precision, and lengths where ATen's kernel is the
  // faster one take ATen's attention; the layout around it must still give the reference values.
  struct Case {
    int64_t T, d;
    at::ScalarType type;
  };
  for (const auto& c :
       {Case{20, 8, at::kFloat}, Case{20, 32, at::kDouble}, Case{513, 32, at::kFloat}, Case{129, 128, at::kFloat}}) {
    const auto q = at::randn({1, c.T, 2, c.d}), k = at::randn({1, c.T, 1, c.d}), v = at::randn({1, c.T, 1, c.d});
    EXPECT_FALSE(causal_attention_uses_cpu_kernels(q.to(c.type), k.to(c.type), v.to(c.type)));
    const auto o = causal_attention(q.to(c.type), k.to(c.type), v.to(c.type));
    const auto ref = reference(q, k, v, at::zeros_like(q));
    // ATen's own rounding, not ours: a loose check that catches a wrong layout or mask.
    EXPECT_LT((o.to(at::kDouble) - ref.value.o).abs().max().item<double>(), 1e-4) << c.T << " " << c.d;
  }
}

TEST(CausalAttention, RejectsMismatchedShapes) {
  const auto q = at::randn({1, 8, 4, 16});
  EXPECT_THROW(causal_attention(q, at::randn({1, 8, 3, 16}), at::randn({1, 8, 3, 16})), c10::Error);  // 4 % 3
  EXPECT_THROW(causal_attention(q, at::randn({1, 8, 2, 16}), at::randn({1, 8, 1, 16})), c10::Error);  // k != v
  EXPECT_THROW(causal_attention(q, at::randn({1, 9, 2, 16}), at::randn({1, 9, 2, 16})), c10::Error);  // length
  EXPECT_THROW(causal_attention(q.view({8, 4, 16}), q, q), c10::Error);                               // rank
}
