// The vectorized row kernels (bitlinear/cpu/row_kernels.hpp): every instruction-set variant this CPU
// can run gives exactly the values of the scalar definitions (cuda/quant_codes.hpp, the CPU
// references), on random rows and on rows made of rounding ties; the backward passes equal a
// double-precision computation within float rounding.
#include "bitlinear/cpu/row_kernels.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/cpu_isa.hpp"
#include "cuda/quant_codes.hpp"
#include "cuda/reference.hpp"
#include "tests/cpu_kernels.hpp"

using bitqat::bitlinear::cpu::row_kernels_for;
using bitqat::bitlinear::cpu::RowKernels;
namespace qc = bitqat::cuda;

namespace {

std::vector<const RowKernels*> variants() { return bitqat::testing::cpu_variants(&row_kernels_for); }

using bitqat::testing::randn;
using bitqat::testing::same_bits;

}  // namespace

TEST(RowKernels, EveryVariantThisCpuRunsIsListed) {
  const auto v = variants();
  ASSERT_FALSE(v.empty());
  EXPECT_STREQ(v[0]->isa, "default");
  EXPECT_NE(row_kernels_for(bitqat::core::CpuIsa::kAvx2), row_kernels_for(bitqat::core::CpuIsa::kDefault));
}

TEST(RowKernels, ActivationCodesAndScalesEqualTheScalarDefinition) {
  const int64_t m = 9;
  for (const int64_t k : {1, 7, 64, 255, 256, 257, 1000}) {
    auto x = randn(static_cast<size_t>(m * k), static_cast<uint32_t>(k), 2.0f);
    // Row 1: every value a tie after scaling (max 127 -> s = 1, others k + 0.5).
    for (int64_t j = 0; j < k; ++j)
      x[static_cast<size_t>(k + j)] = j == 0 ? 127.0f : static_cast<float>(j % 90) - 44.5f;
    x[static_cast<size_t>(2 * k)] = std::numeric_limits<float>::quiet_NaN();  // row 2 is not finite
    x[static_cast<size_t>(3 * k)] = std::numeric_limits<float>::infinity();   // nor row 3
    // Rows 4 and 5: the non-finite value in the last column (the scalar tail when K % 16 != 0).
    x[static_cast<size_t>(5 * k - 1)] = std::numeric_limits<float>::quiet_NaN();
    x[static_cast<size_t>(6 * k - 1)] = -std::numeric_limits<float>::infinity();
    const auto nw = randn(static_cast<size_t>(k), 99, 1.0f);
    for (const bool norm : {false, true}) {
      const int64_t ldq = k + 5;
      std::vector<int8_t> want_q(static_cast<size_t>(m * ldq));
      std::vector<float> want_s(static_cast<size_t>(m));
      // The scalar definition: cuda/reference's rows built from quant_codes.hpp.
      std::vector<float> h(static_cast<size_t>(k));
      for (int64_t r = 0; r < m; ++r) {
        const float* xr = x.data() + r * k;
        if (norm) {
          qc::rms_norm_row(xr, k, nw.data(), 1e-6, h.data());
          xr = h.data();
        }
        want_s[static_cast<size_t>(r)] = qc::act_quant_row(xr, k, ldq, 1e-5f, 127, want_q.data() + r * ldq);
      }
      for (const auto* rk : variants()) {
        std::vector<int8_t> q(static_cast<size_t>(m * ldq), 42);
        std::vector<float> qf(static_cast<size_t>(m * ldq), 42.0f), s(static_cast<size_t>(m));
        rk->act_quant_rows(x.data(), k, ldq, 1e-5f, 127, false, norm ? nw.data() : nullptr, 1e-6, q.data(), qf.data(),
                           s.data(), nullptr, 0, m);
        EXPECT_EQ(q, want_q) << rk->isa << " K " << k << " norm " << norm;
        EXPECT_TRUE(same_bits(s.data(), want_s.data(), s.size())) << rk->isa << " K " << k;
        for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(qf[i], static_cast<float>(q[i])) << rk->isa;
      }
    }
  }
}

TEST(RowKernels, FakeQuantBlendAndRmsNormEqualTheScalarFormulas) {
  const int64_t m = 5, k = 300;
  auto x = randn(static_cast<size_t>(m * k), 3, 1.5f);
  // Rows 1 and 3 not finite: scale NaN, so code / s is NaN and so is every blend but lambda 0's x.
  x[static_cast<size_t>(k + 7)] = std::numeric_limits<float>::quiet_NaN();
  x[static_cast<size_t>(3 * k)] = std::numeric_limits<float>::infinity();
  const auto w = randn(static_cast<size_t>(k), 4, 1.0f);
  for (const float lambda : {0.0f, 0.3f, 1.0f}) {
    // out = x + lambda * (code / s - x): one float operation per step (the composed ATen path's).
    std::vector<float> want(static_cast<size_t>(m * k)), want_s(static_cast<size_t>(m));
    std::vector<int8_t> q(static_cast<size_t>(k));
    for (int64_t r = 0; r < m; ++r) {
      const float s = qc::act_quant_row(x.data() + r * k, k, k, 1e-5f, 127, q.data());
      want_s[static_cast<size_t>(r)] = s;
      for (int64_t j = 0; j < k; ++j) {
        const float xv = x[static_cast<size_t>(r * k + j)];
        const float d = static_cast<float>(q[static_cast<size_t>(j)]) / s;
        want[static_cast<size_t>(r * k + j)] = lambda == 1.0f ? d : (lambda == 0.0f ? xv : xv + lambda * (d - xv));
      }
    }
    for (const auto* rk : variants()) {
      std::vector<float> out(static_cast<size_t>(m * k)), s(static_cast<size_t>(m));
      rk->act_fake_quant_rows(x.data(), k, 1e-5f, 127, lambda, out.data(), s.data(), 0, m);
      EXPECT_TRUE(same_bits(out.data(), want.data(), out.size())) << rk->isa << " lambda " << lambda;
      EXPECT_TRUE(same_bits(s.data(), want_s.data(), s.size())) << rk->isa;
    }
  }
  std::vector<float> want_y(static_cast<size_t>(m * k)), want_r(static_cast<size_t>(m));
  qc::rms_norm_ref(x.data(), m, k, w.data(), 1e-6, want_y.data(), want_r.data());
  for (const auto* rk : variants()) {
    std::vector<float> y(static_cast<size_t>(m * k)), r(static_cast<size_t>(m));
    rk->rms_norm(x.data(), k, w.data(), 1e-6, y.data(), r.data(), 0, m);
    EXPECT_TRUE(same_bits(y.data(), want_y.data(), y.size())) << rk->isa;
    EXPECT_TRUE(same_bits(r.data(), want_r.data(), r.size())) << rk->isa;
  }
}

TEST(RowKernels, WeightSumsCodesAndFakeQuantEqualTheScalarDefinition) {
  const int64_t rows = 6, cols = 333;
  auto w = randn(static_cast<size_t>(rows * cols), 5, 0.05f);
  w[17] = std::numeric_limits<float>::quiet_NaN();  // code 0, as ternary_code says
  for (const int64_t group : {int64_t{64}, int64_t{100}, cols}) {
    const int64_t groups = (cols + group - 1) / group;
    std::vector<double> want_sums(static_cast<size_t>(rows * groups));
    std::vector<float> gamma(static_cast<size_t>(rows * groups));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t lo = g * group, n = std::min(group, cols - lo);
        want_sums[static_cast<size_t>(r * groups + g)] = qc::abs_sum(w.data() + r * cols + lo, n);
        gamma[static_cast<size_t>(r * groups + g)] =
            std::isnan(want_sums[static_cast<size_t>(r * groups + g)])
                ? 0.02f
                : static_cast<float>(want_sums[static_cast<size_t>(r * groups + g)] / n);
      }
    }
    std::vector<int8_t> want_codes(static_cast<size_t>(rows * cols));
    std::vector<float> want_out(static_cast<size_t>(rows * cols));
    const float lambda = 0.25f;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j) {
        const float gm = gamma[static_cast<size_t>(r * groups + j / group)];
        const float wv = w[static_cast<size_t>(r * cols + j)];
        const int8_t c = qc::ternary_code(wv, gm, 1e-5f);
        want_codes[static_cast<size_t>(r * cols + j)] = c;
        const float d = static_cast<float>(c) * gm;
        want_out[static_cast<size_t>(r * cols + j)] = wv + lambda * (d - wv);
      }
    }
    for (const auto* rk : variants()) {
      std::vector<double> sums(want_sums.size());
      rk->abs_sums(w.data(), cols, group, sums.data(), 0, rows);
      for (size_t i = 0; i < sums.size(); ++i) {
        EXPECT_TRUE(sums[i] == want_sums[i] || (std::isnan(sums[i]) && std::isnan(want_sums[i])))
            << rk->isa << " " << i;
      }
      std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
      std::vector<float> codes_f(codes.size()), out(codes.size());
      rk->ternary_rows(w.data(), cols, group, groups, gamma.data(), 1e-5f, codes.data(), codes_f.data(), lambda,
                       out.data(), 0, rows);
      EXPECT_EQ(codes, want_codes) << rk->isa << " G " << group;
      EXPECT_TRUE(same_bits(out.data(), want_out.data(), out.size())) << rk->isa << " G " << group;
      for (size_t i = 0; i < codes.size(); ++i) ASSERT_EQ(codes_f[i], static_cast<float>(codes[i]));
    }
  }
  // The rounding boundaries: w / (gamma + eps) exactly +-0.5 (rounds away: +-1), the floats just
  // inside (0), +-1.5, +-0, infinities and NaN, against ternary_code, in every variant.
  const float gm = 0.03f, denom = gm + 1e-5f;
  const float half = 0.5f * denom;  // exact: half / denom == 0.5
  const std::vector<float> edge = {half,
                                   -half,
                                   std::nextafter(half, 0.0f),
                                   std::nextafter(-half, 0.0f),
                                   1.5f * denom,
                                   -1.5f * denom,
                                   0.0f,
                                   -0.0f,
                                   std::numeric_limits<float>::infinity(),
                                   -std::numeric_limits<float>::infinity(),
                                   std::numeric_limits<float>::quiet_NaN(),
                                   1e30f};
  ASSERT_EQ(half / denom, 0.5f);
  const int64_t n = static_cast<int64_t>(edge.size());
  std::vector<int8_t> want(edge.size());
  for (size_t i = 0; i < edge.size(); ++i) want[i] = qc::ternary_code(edge[i], gm, 1e-5f);
  EXPECT_EQ(want[0], 1);
  EXPECT_EQ(want[1], -1);
  EXPECT_EQ(want[2], 0);
  for (const auto* rk : variants()) {
    std::vector<int8_t> codes(edge.size());
    std::vector<float> out(edge.size());
    rk->ternary_rows(edge.data(), n, n, 0, &gm, 1e-5f, codes.data(), nullptr, 1.0f, out.data(), 0, 1);
    EXPECT_EQ(codes, want) << rk->isa;
    for (size_t i = 0; i < edge.size(); ++i) EXPECT_EQ(out[i], static_cast<float>(want[i]) * gm) << rk->isa << " " << i;
  }
}

TEST(RowKernels, EpilogueFollowsTheReferenceOrder) {
  const int64_t m = 4, n = 6;
  // Three groups (per-group scales), and one group with one scale per column (per channel, the
  // kernel's gstride 1 loop).
  for (const int64_t groups : {int64_t{3}, int64_t{1}}) {
    std::mt19937 rng(8);
    std::vector<int32_t> acc_i(static_cast<size_t>(m * n * groups));
    for (auto& a : acc_i) a = static_cast<int32_t>(rng() % 20001) - 10000;
    const auto gamma = randn(static_cast<size_t>(n * groups), 9, 0.1f);
    const auto s = randn(static_cast<size_t>(m), 10, 30.0f);
    const auto bias = randn(static_cast<size_t>(n), 11, 1.0f);
    std::vector<float> want(static_cast<size_t>(m * n));
    qc::epilogue_ref(acc_i.data(), m, n, groups, gamma.data(), groups, s.data(), bias.data(), want.data());
    // The kernel takes one [m, n] int32 matrix per group.
    std::vector<std::vector<int32_t>> acc(groups, std::vector<int32_t>(static_cast<size_t>(m * n)));
    std::vector<const int32_t*> ptrs;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t i = 0; i < m * n; ++i) acc[g][i] = acc_i[static_cast<size_t>(i * groups + g)];
      ptrs.push_back(acc[g].data());
    }
    for (const auto* rk : variants()) {
      std::vector<float> y(static_cast<size_t>(m * n));
      rk->linear_epilogue(ptrs.data(), groups, n, gamma.data(), groups, s.data(), bias.data(), y.data(), 0, m);
      EXPECT_TRUE(same_bits(y.data(), want.data(), y.size())) << rk->isa << " groups " << groups;
    }
  }
}

TEST(RowKernels, DequantizedCodesAreOneFloatOperationPerValue) {
  // The backward's dequantization from int8 codes: code / s per row, code * gamma per group; each a
  // single correctly rounded float operation, so the expected value is that operation here.
  const int64_t rows = 5, cols = 300, group = 64, groups = (cols + group - 1) / group;
  std::mt19937 rng(21);
  std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
  for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
  const auto s = randn(static_cast<size_t>(rows), 22, 40.0f);
  const auto gamma = randn(static_cast<size_t>(rows * groups), 23, 0.05f);
  for (const auto* rk : variants()) {
    std::vector<float> x(codes.size()), w(codes.size());
    rk->dequant_rows(codes.data(), cols, s.data(), x.data(), 0, rows);
    rk->scale_codes(codes.data(), cols, group, groups, gamma.data(), w.data(), 0, rows);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j) {
        const auto i = static_cast<size_t>(r * cols + j);
        const float c = static_cast<float>(codes[i]);
        ASSERT_EQ(x[i], c / s[static_cast<size_t>(r)]) << rk->isa << " row " << r << " col " << j;
        ASSERT_EQ(w[i], c * gamma[static_cast<size_t>(r * groups + j / group)]) << rk->isa << " row " << r;
      }
    }
    // One scale for the whole tensor (stride 0).
    std::vector<float> w1(codes.size());
    rk->scale_codes(codes.data(), cols, cols, 0, gamma.data(), w1.data(), 0, rows);
    for (size_t i = 0; i < codes.size(); ++i) ASSERT_EQ(w1[i], static_cast<float>(codes[i]) * gamma[0]) << rk->isa;
  }
}

TEST(RowKernels, BackwardPassesEqualADoublePrecisionComputation) {
  const int64_t m = 7, k = 130;
  const auto x = randn(static_cast<size_t>(m * k), 12, 1.0f);
  const auto g = randn(static_cast<size_t>(m * k), 13, 1.0f);
  const auto w = randn(static_cast<size_t>(k), 14, 1.0f);
  std::vector<float> r(static_cast<size_t>(m)), y(static_cast<size_t>(m * k));
  qc::rms_norm_ref(x.data(), m, k, w.data(), 1e-6, y.data(), r.data());
  // dx = r (g w - xhat mean(g w xhat)), dw = sum_rows g xhat; in double.
  std::vector<double> dx(static_cast<size_t>(m * k)), dw(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    double c = 0;
    for (int64_t j = 0; j < k; ++j) c += double(g[i * k + j]) * w[j] * (double(x[i * k + j]) * r[i]);
    c /= k;
    for (int64_t j = 0; j < k; ++j) {
      const double xhat = double(x[i * k + j]) * r[i];
      dx[static_cast<size_t>(i * k + j)] = r[i] * (double(g[i * k + j]) * w[j] - xhat * c);
      dw[static_cast<size_t>(j)] += double(g[i * k + j]) * xhat;
    }
  }
  // Without a weight (w = 1): dx = r (g - xhat mean(g xhat)).
  std::vector<double> dx1(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i) {
    double c = 0;
    for (int64_t j = 0; j < k; ++j) c += double(g[i * k + j]) * (double(x[i * k + j]) * r[i]);
    c /= k;
    for (int64_t j = 0; j < k; ++j) {
      dx1[static_cast<size_t>(i * k + j)] = r[i] * (double(g[i * k + j]) - double(x[i * k + j]) * r[i] * c);
    }
  }
  std::vector<float> first_dx, first_dx1;
  for (const auto* rk : variants()) {
    std::vector<float> got(static_cast<size_t>(m * k)), dwp(static_cast<size_t>(k), 0.0f);
    rk->rms_norm_backward(g.data(), x.data(), w.data(), r.data(), k, false, got.data(), dwp.data(), 0, m);
    // A handful of float roundings per element on values of order 1-10: 1e-5 relative to the
    // largest magnitude bounds them.
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], dx[i], 1e-5 * (1 + std::fabs(dx[i]))) << rk->isa;
    for (size_t j = 0; j < dwp.size(); ++j) ASSERT_NEAR(dwp[j], dw[j], 1e-5 * (1 + std::fabs(dw[j]))) << rk->isa;
    std::vector<float> got1(static_cast<size_t>(m * k));
    rk->rms_norm_backward(g.data(), x.data(), nullptr, r.data(), k, false, got1.data(), nullptr, 0, m);
    for (size_t i = 0; i < got1.size(); ++i) ASSERT_NEAR(got1[i], dx1[i], 1e-5 * (1 + std::fabs(dx1[i]))) << rk->isa;
    // Every variant sums in the same fixed order: the same bits.
    if (first_dx.empty()) {
      first_dx = got;
      first_dx1 = got1;
    } else {
      EXPECT_TRUE(same_bits(got.data(), first_dx.data(), got.size())) << rk->isa;
      EXPECT_TRUE(same_bits(got1.data(), first_dx1.data(), got1.size())) << rk->isa;
    }
  }
  // The clipped STE: g where |x| s / qmax <= clip, g (1 - lambda) elsewhere.
  std::vector<float> s(static_cast<size_t>(m));
  std::vector<int8_t> q(static_cast<size_t>(k));
  for (int64_t i = 0; i < m; ++i)
    s[static_cast<size_t>(i)] = qc::act_quant_row(x.data() + i * k, k, k, 1e-5f, 127, q.data());
  for (const auto* rk : variants()) {
    std::vector<float> got(static_cast<size_t>(m * k));
    rk->act_ste_backward(g.data(), x.data(), s.data(), k, 127, 0.5f, 0.75f, got.data(), 0, m);
    for (int64_t i = 0; i < m * k; ++i) {
      const bool inside = std::fabs(x[i]) * s[static_cast<size_t>(i / k)] / 127.0f <= 0.5f;
      ASSERT_EQ(got[static_cast<size_t>(i)], g[static_cast<size_t>(i)] * (0.25f + 0.75f * (inside ? 1.0f : 0.0f)))
          << rk->isa;
    }
  }
}

// The fused input of the exact linears after relu^2 (act_quant_rows with relu2 and a norm; the
// backward with relu2): the same bits as the composed passes. Forward: relu keeping NaN, negatives and
// -0 to +0, a = relu * relu, then cuda/quant_codes.hpp's RMSNorm row and codes.
// Backward: the variant's own RMSNorm backward on the materialized a, then g (relu + relu). (relu here
// maps -0 to +0, where at::relu keeps -0; relu^2 is +0 either way.)
TEST(RowKernels, ReluSquaredNormCodesAndBackwardEqualTheComposedPasses) {
  const int64_t m = 6;
  for (const int64_t k : {5, 64, 130, 512}) {
    auto u = randn(static_cast<size_t>(m * k), static_cast<uint32_t>(k + 7), 1.5f);
    u[1] = -0.0f;
    u[static_cast<size_t>(2 * k + 1)] = std::numeric_limits<float>::quiet_NaN();   // row 2 not finite
    u[static_cast<size_t>(3 * k + 2)] = -std::numeric_limits<float>::quiet_NaN();  // NaN of either sign is kept
    for (int64_t j = 0; j < k; ++j) u[static_cast<size_t>(4 * k + j)] = -1.0f - static_cast<float>(j);  // all 0
    const auto nw = randn(static_cast<size_t>(k), 5, 1.0f);
    const auto g = randn(static_cast<size_t>(m * k), 6, 1.0f);
    std::vector<float> a(static_cast<size_t>(m * k)), rel(a.size()), want_r(static_cast<size_t>(m));
    for (size_t i = 0; i < a.size(); ++i) {
      rel[i] = (u[i] > 0.0f || std::isnan(u[i])) ? u[i] : 0.0f;
      a[i] = rel[i] * rel[i];
    }
    std::vector<int8_t> want_q(static_cast<size_t>(m * k));
    std::vector<float> want_s(static_cast<size_t>(m)), h(static_cast<size_t>(k));
    for (int64_t r = 0; r < m; ++r) {
      want_r[static_cast<size_t>(r)] = qc::rms_norm_row(a.data() + r * k, k, nw.data(), 1e-6, h.data());
      want_s[static_cast<size_t>(r)] = qc::act_quant_row(h.data(), k, k, 1e-5f, 127, want_q.data() + r * k);
    }
    EXPECT_TRUE(std::isnan(want_s[2]));
    for (const auto* rk : variants()) {
      std::vector<int8_t> q(static_cast<size_t>(m * k), 42);
      std::vector<float> s(static_cast<size_t>(m)), r(static_cast<size_t>(m));
      rk->act_quant_rows(u.data(), k, k, 1e-5f, 127, true, nw.data(), 1e-6, q.data(), nullptr, s.data(), r.data(), 0,
                         m);
      EXPECT_EQ(q, want_q) << rk->isa << " K " << k;
      EXPECT_TRUE(same_bits(s.data(), want_s.data(), s.size())) << rk->isa << " K " << k;
      EXPECT_TRUE(same_bits(r.data(), want_r.data(), r.size())) << rk->isa << " K " << k;

      std::vector<float> dx_a(a.size()), dw_a(static_cast<size_t>(k), 0.0f), dx(a.size()),
          dw(static_cast<size_t>(k), 0.0f);
      rk->rms_norm_backward(g.data(), a.data(), nw.data(), r.data(), k, false, dx_a.data(), dw_a.data(), 0, m);
      for (size_t i = 0; i < dx_a.size(); ++i) dx_a[i] = dx_a[i] * (rel[i] + rel[i]);
      rk->rms_norm_backward(g.data(), u.data(), nw.data(), r.data(), k, true, dx.data(), dw.data(), 0, m);
      EXPECT_TRUE(same_bits(dx.data(), dx_a.data(), dx.size())) << rk->isa << " K " << k;
      EXPECT_TRUE(same_bits(dw.data(), dw_a.data(), dw.size())) << rk->isa << " K " << k;
      // In place (dx is g's buffer): the same bits.
      std::vector<float> gi(g), dwi(static_cast<size_t>(k), 0.0f);
      rk->rms_norm_backward(gi.data(), u.data(), nw.data(), r.data(), k, true, gi.data(), dwi.data(), 0, m);
      EXPECT_TRUE(same_bits(gi.data(), dx.data(), dx.size())) << rk->isa << " in place, K " << k;
      EXPECT_TRUE(same_bits(dwi.data(), dw.data(), dw.size())) << rk->isa << " in place, K " << k;
      // A negative u passes no gradient; a NaN u passes NaN.
      EXPECT_EQ(dx[static_cast<size_t>(4 * k + 3)], 0.0f) << rk->isa;
      EXPECT_TRUE(std::isnan(dx[static_cast<size_t>(2 * k + 1)])) << rk->isa;
    }
  }
}
