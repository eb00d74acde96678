// The quantization kernels of cuda/quant.cu, run on the CPU harness (cuda/sim/) from their own
// source, against the scalar references of cuda/reference.hpp: codes, scales and fake-quantized
// values bit for bit (the kernels round every operation as the references do: --fmad=false on the
// GPU, no contraction here), under every harness configuration (thread orders, poison patterns), over
// the shape grid the GPU runs shrunk to CI time, with NaN / infinity / zero rows and exact ties.
#include "cuda/quant.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/reference.hpp"
#include "tests/cuda/sim/testing.hpp"

using namespace bitqat::cuda;
using bitqat::cuda::sim::testing::config_name;
using bitqat::cuda::sim::testing::harness_configs;

namespace {

const std::vector<int64_t> kRows = {1, 2, 16, 17, 64, 65};
const std::vector<int64_t> kCols = {32, 64, 96, 128, 200, 4096, 14336};

// Rows of normal values with the special rows the kernels must get right: all zeros, a NaN, an
// infinity, and (row 4) values that land exactly on .5 after scaling (amax 127, so s = 1).
std::vector<float> activations(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(m * k));
  for (auto& v : x) v = nd(rng);
  auto row = [&](int64_t r) { return x.data() + r * k; };
  if (m > 1) std::fill(row(1), row(1) + k, 0.0f);
  if (m > 2) row(2)[k / 3] = std::numeric_limits<float>::quiet_NaN();
  if (m > 3) row(3)[k - 1] = -std::numeric_limits<float>::infinity();
  if (m > 4) {
    for (int64_t j = 0; j < k; ++j) row(4)[j] = static_cast<float>(j % 250) - 124.5f;  // ties at every .5
    row(4)[0] = 127.0f;
  }
  return x;
}

// bf16 of a float by round to nearest even (the values bf16 inputs carry), and back.
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Bit-for-bit equality of float vectors (NaN equals NaN of the same bits).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
size_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return i;
  }
  return a.size();
}

std::string shape(int64_t m, int64_t k) { return "M " + std::to_string(m) + " K " + std::to_string(k); }

}  // namespace

// Per-token codes with and without the fused RMSNorm, float32 and bf16 inputs, row stride past K.
TEST(QuantKernels, QuantizeRowsEqualsTheReference) {
  for (const int64_t m : kRows) {
    for (const int64_t k : kCols) {
      const bool big = k >= 4096;
      const auto x = activations(m, k, static_cast<uint32_t>(m * 7 + k));
      std::vector<float> nw(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) nw[static_cast<size_t>(j)] = 0.5f + static_cast<float>(j % 13) / 13.0f;
      std::vector<uint16_t> xb(x.size());
      std::vector<float> xbf(x.size());
      for (size_t i = 0; i < x.size(); ++i) xbf[i] = from_bf16(xb[i] = to_bf16(x[i]));
      const int64_t ldq = padded_k(k);
      for (const bool bf16 : {false, true}) {
        for (const bool norm : {false, true}) {
          if (big && bf16 && norm) continue;  // each option is covered at every size by the others
          std::vector<int8_t> qr(static_cast<size_t>(m * ldq));
          std::vector<float> sr(static_cast<size_t>(m));
          quantize_rows_ref(bf16 ? xbf.data() : x.data(), m, k, ldq, 1e-5f, 127, norm ? nw.data() : nullptr, 1e-6,
                            qr.data(), sr.data());
          for (const auto& cfg : harness_configs(!big)) {
            sim::ScopedOptions o(cfg);
            std::vector<int8_t> q(qr.size(), 99);
            std::vector<float> s(sr.size(), -1.0f);
            quantize_rows(bf16 ? static_cast<const void*>(xb.data()) : x.data(), bf16 ? DType::kBF16 : DType::kF32, m,
                          k, ldq, 1e-5f, 127, norm ? nw.data() : nullptr, 1e-6, q.data(), s.data(), nullptr);
            ASSERT_EQ(q, qr) << shape(m, k) << " bf16 " << bf16 << " norm " << norm << ", " << config_name(cfg)
                             << ": first difference at " << first_difference(q, qr);
            ASSERT_TRUE(same_bits(s, sr))
                << shape(m, k) << " bf16 " << bf16 << " norm " << norm << ", " << config_name(cfg);
          }
        }
      }
    }
  }
}

// The ties of row 4 and the special rows, by hand: the references are right on them.
TEST(QuantKernels, SpecialRowsGiveTheirDefinedCodes) {
  const int64_t m = 5, k = 96, ldq = padded_k(k);
  const auto x = activations(m, k, 3);
  std::vector<int8_t> q(static_cast<size_t>(m * ldq));
  std::vector<float> s(static_cast<size_t>(m));
  quantize_rows(x.data(), DType::kF32, m, k, ldq, 1e-5f, 127, nullptr, 0.0, q.data(), s.data(), nullptr);
  EXPECT_EQ(s[1], 127.0f / 1e-5f);  // zero row: amax below eps
  for (int64_t j = 0; j < ldq; ++j) EXPECT_EQ(q[static_cast<size_t>(ldq + j)], 0);
  EXPECT_TRUE(std::isnan(s[2]));  // NaN row: scale NaN, codes 0
  EXPECT_TRUE(std::isnan(s[3]));  // infinite row too
  for (int64_t j = 0; j < ldq; ++j) EXPECT_EQ(q[static_cast<size_t>(2 * ldq + j)], 0);
  EXPECT_EQ(s[4], 1.0f);
  // x = j - 124.5 (j >= 1): ties, rounded away from zero; j = 0 holds 127.
  EXPECT_EQ(q[static_cast<size_t>(4 * ldq)], 127);
  EXPECT_EQ(q[static_cast<size_t>(4 * ldq + 1)], -124);  // -123.5 -> -124
  EXPECT_EQ(q[static_cast<size_t>(4 * ldq + 95)], -30);  // 95 - 124.5 = -29.5 -> -30
}

TEST(QuantKernels, RmsNormRowsEqualsTheReference) {
  for (const int64_t m : {1, 17, 65}) {
    for (const int64_t k : kCols) {
      const auto x = activations(m, k, static_cast<uint32_t>(k + m));
      std::vector<float> w(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) w[static_cast<size_t>(j)] = 1.0f + static_cast<float>(j % 7) * 0.125f;
      for (const bool weighted : {false, true}) {
        std::vector<float> yr(x.size()), rr(static_cast<size_t>(m));
        rms_norm_ref(x.data(), m, k, weighted ? w.data() : nullptr, 1e-6, yr.data(), rr.data());
        for (const auto& cfg : harness_configs(k < 4096)) {
          sim::ScopedOptions o(cfg);
          std::vector<float> y(x.size(), -7.0f), r(rr.size(), -7.0f);
          rms_norm_rows(x.data(), DType::kF32, m, k, weighted ? w.data() : nullptr, 1e-6, y.data(), r.data(), nullptr);
          ASSERT_TRUE(same_bits(y, yr)) << shape(m, k) << " weighted " << weighted << ", " << config_name(cfg)
                                        << ": first difference at " << first_difference(y, yr);
          ASSERT_TRUE(same_bits(r, rr)) << shape(m, k);
        }
      }
    }
  }
}

TEST(QuantKernels, QuantizeTensorEqualsTheReference) {
  for (const int64_t n : {1, 100, 256, 4097, 14339}) {
    auto x = activations(1, n, static_cast<uint32_t>(n));
    for (const bool poisoned : {false, true}) {
      if (poisoned) x[static_cast<size_t>(n / 2)] = std::numeric_limits<float>::infinity();
      std::vector<int8_t> qr(static_cast<size_t>(n));
      float sr = 0;
      quantize_tensor_ref(x.data(), n, 1e-5f, 7, qr.data(), &sr);  // 4-bit codes
      for (const auto& cfg : harness_configs()) {
        sim::ScopedOptions o(cfg);
        std::vector<int8_t> q(qr.size(), 99);
        float s = -1;
        quantize_tensor(x.data(), n, 1e-5f, 7, q.data(), &s, nullptr);
        ASSERT_EQ(q, qr) << "n " << n << ", " << config_name(cfg);
        ASSERT_EQ(std::memcmp(&s, &sr, 4), 0) << "n " << n << " scale " << s << " vs " << sr;
      }
    }
  }
}

// Weight scales (absmean, and the binary mean) and codes at every granularity: groups of 64, 128,
// 256 and 100 (a last group shorter than the others), per channel, per tensor.
TEST(QuantKernels, WeightScalesAndCodesEqualTheReference) {
  for (const int64_t rows : {1, 9, 65}) {
    for (const int64_t cols : {32, 96, 200, 4096}) {
      if (rows == 65 && cols == 4096) continue;  // 4160 blocks of 256 threads at group 64: minutes here
      std::mt19937 rng(static_cast<uint32_t>(rows * 1000 + cols));
      std::normal_distribution<float> nd(0.0f, 0.02f);
      std::vector<float> w(static_cast<size_t>(rows * cols));
      for (auto& v : w) v = nd(rng);
      w[0] = 0.0f;
      for (const int64_t group : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{100}, cols, int64_t{0}}) {
        const bool per_tensor = group == 0;
        const int64_t g = per_tensor ? cols : group;
        const int64_t groups = per_tensor ? 1 : scale_groups(cols, g);
        const int64_t stride = per_tensor ? 0 : groups;
        for (const bool binary : {false, true}) {
          std::vector<float> gr(static_cast<size_t>(per_tensor ? 1 : rows * groups)), mr(gr.size());
          weight_scales_ref(w.data(), rows, cols, g, per_tensor, gr.data(), binary ? mr.data() : nullptr);
          std::vector<int8_t> cr(w.size());
          weight_codes_ref(w.data(), rows, cols, g, stride, gr.data(), binary ? mr.data() : nullptr, 1e-5f, cr.data());
          for (const auto& cfg : harness_configs(rows * cols < 100000)) {
            sim::ScopedOptions o(cfg);
            std::vector<float> gk(gr.size(), -1.0f), mk(gr.size(), -1.0f);
            std::vector<double> ws(static_cast<size_t>(2 * rows));
            weight_scales(w.data(), rows, cols, g, per_tensor, gk.data(), binary ? mk.data() : nullptr, ws.data(),
                          nullptr);
            const std::string what = "rows " + std::to_string(rows) + " cols " + std::to_string(cols) + " group " +
                                     std::to_string(group) + " binary " + std::to_string(binary) + ", " +
                                     config_name(cfg);
            ASSERT_TRUE(same_bits(gk, gr)) << what << ": first difference at " << first_difference(gk, gr);
            if (binary) {
              ASSERT_TRUE(same_bits(mk, mr)) << what;
            }
            std::vector<int8_t> ck(w.size(), 99);
            weight_codes(w.data(), rows, cols, g, stride, gr.data(), binary ? mr.data() : nullptr, 1e-5f, ck.data(),
                         nullptr);
            ASSERT_EQ(ck, cr) << what;
          }
        }
      }
    }
  }
}

TEST(QuantKernels, PackCodesEqualsTheReference) {
  for (const int64_t n : {1, 9, 65}) {
    for (const int64_t k : {32, 96, 200, 4096, 14336}) {
      std::mt19937 rng(static_cast<uint32_t>(n + k));
      std::vector<int8_t> codes(static_cast<size_t>(n * k));
      for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
      std::vector<uint32_t> pr(static_cast<size_t>(n * words_per_row(k)));
      pack_ternary_ref(codes.data(), n, k, pr.data());
      for (const auto& cfg : harness_configs(k < 4096)) {
        sim::ScopedOptions o(cfg);
        std::vector<uint32_t> p(pr.size(), 0xFFFFFFFFu);
        pack_codes(codes.data(), n, k, p.data(), nullptr);
        ASSERT_EQ(p, pr) << shape(n, k) << ", " << config_name(cfg);
      }
    }
  }
}

// The lambda ramp's passes: activation fake quantization at lambda 0, a blend and 1 (a NaN row
// included), its clipped straight-through gradient, and the ternary weight blend.
TEST(QuantKernels, FakeQuantRampsAndTheirGradientEqualTheReference) {
  for (const int64_t m : {1, 17, 65}) {
    for (const int64_t k : {32, 200, 4096}) {
      const auto x = activations(m, k, static_cast<uint32_t>(3 * m + k));
      std::mt19937 rng(static_cast<uint32_t>(m + 5 * k));
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> g(x.size());
      for (auto& v : g) v = nd(rng);
      for (const float lambda : {0.0f, 0.3f, 1.0f}) {
        std::vector<float> outr(x.size()), sr(static_cast<size_t>(m));
        act_fake_quant_ref(x.data(), m, k, 1e-5f, 127, lambda, outr.data(), sr.data());
        for (const auto& cfg : harness_configs(k < 4096)) {
          sim::ScopedOptions o(cfg);
          std::vector<float> out(x.size(), -9.0f), s(sr.size(), -9.0f);
          act_fake_quant(x.data(), m, k, 1e-5f, 127, lambda, out.data(), s.data(), nullptr);
          ASSERT_TRUE(same_bits(out, outr)) << shape(m, k) << " lambda " << lambda << ", " << config_name(cfg)
                                            << ": first difference at " << first_difference(out, outr);
          ASSERT_TRUE(same_bits(s, sr)) << shape(m, k);
        }
        for (const float clip : {1.0f, 0.5f}) {
          std::vector<float> dxr(x.size()), dx(x.size(), -9.0f);
          act_ste_backward_ref(g.data(), x.data(), sr.data(), m, k, 127, clip, lambda, dxr.data());
          act_ste_backward(g.data(), x.data(), sr.data(), m, k, 127, clip, lambda, dx.data(), nullptr);
          ASSERT_TRUE(same_bits(dx, dxr)) << shape(m, k) << " lambda " << lambda << " clip " << clip;
        }
      }
      // Ternary weights, per group of 64 and per tensor.
      std::vector<float> w(static_cast<size_t>(m * k));
      for (auto& v : w) v = nd(rng) * 0.02f;
      for (const int64_t group : {int64_t{64}, int64_t{0}}) {
        const bool per_tensor = group == 0;
        const int64_t gs = per_tensor ? k : group, groups = per_tensor ? 1 : scale_groups(k, gs);
        std::vector<float> gamma(static_cast<size_t>(m * groups));
        weight_scales_ref(w.data(), m, k, gs, per_tensor, gamma.data(), nullptr);
        for (const float lambda : {0.0f, 0.6f, 1.0f}) {
          std::vector<float> outr(w.size()), out(w.size(), -9.0f);
          ternary_fake_quant_ref(w.data(), m, k, gs, per_tensor ? 0 : groups, gamma.data(), 1e-5f, lambda, outr.data());
          ternary_fake_quant(w.data(), m, k, gs, per_tensor ? 0 : groups, gamma.data(), 1e-5f, lambda, out.data(),
                             nullptr);
          ASSERT_TRUE(same_bits(out, outr)) << shape(m, k) << " group " << group << " lambda " << lambda;
        }
      }
    }
  }
}

// The launchers refuse bad sizes before launching anything.
TEST(QuantKernels, LaunchersRefuseBadSizes) {
  float x[4] = {};
  int8_t q[4] = {};
  float s[1] = {};
  EXPECT_THROW(quantize_rows(x, DType::kF32, 1, 0, 4, 1e-5f, 127, nullptr, 0.0, q, s, nullptr), std::invalid_argument);
  EXPECT_THROW(quantize_rows(x, DType::kF32, 1, 4, 3, 1e-5f, 127, nullptr, 0.0, q, s, nullptr), std::invalid_argument);
  EXPECT_THROW(weight_scales(x, 1, 4, 0, false, s, nullptr, nullptr, nullptr), std::invalid_argument);
  EXPECT_THROW(ternary_fake_quant(x, 1, 4, 0, 1, s, 1e-5f, 1.0f, x, nullptr), std::invalid_argument);
}
