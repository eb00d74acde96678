// The W1.58A8 kernels of cuda/w158a8.cu on the CPU harness (cuda/sim/), from their own source: the
// GEMV (M <= 16, dp4a) and the GEMM (int8 mma.sync) against the scalar references of
// cuda/reference.hpp over the shape grid the GPU runs shrunk to CI time, under every harness
// configuration; activation quantization and quantize-and-pack; and the launchers' refusals of bad
// arguments before any launch.
#include "cuda/w158a8.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/check.hpp"
#include "cuda/launch.hpp"
#include "cuda/reference.hpp"
#include "tests/cuda/sim/testing.hpp"

using namespace bitqat::cuda;
using bitqat::cuda::sim::testing::config_name;
using bitqat::cuda::sim::testing::harness_configs;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(W158A8Launcher, RejectsBadArgumentsBeforeLaunching) {
  // Host buffers stand in for device pointers: nothing may be launched or dereferenced.
  int8_t q[256] = {};
  float xs[1] = {1.0f}, ws[4] = {1.0f, 1.0f, 1.0f, 1.0f}, y[2] = {};
  uint32_t packed[32] = {};
  auto mm = [&](int64_t m, ScaleKind kind, int64_t group, int64_t n, int64_t k, DType dt = DType::kF32,
                const float* wsp = nullptr) {
    return error_of(
        [&] { w158a8_matmul(q, xs, m, packed, wsp ? wsp : ws, kind, group, n, k, nullptr, y, dt, nullptr); });
  };
  EXPECT_NE(mm(1, ScaleKind::kPerGroup, 0, 2, 130).find("group size must be a positive multiple of 64, got 0"),
            std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerGroup, 96, 2, 130).find("got 96"), std::string::npos);
  EXPECT_NE(mm(1, static_cast<ScaleKind>(5), 64, 2, 130).find("unknown scale kind 5"), std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerTensor, 0, 2, 130, static_cast<DType>(9)).find("output dtype"), std::string::npos);
  EXPECT_NE(mm(0, ScaleKind::kPerTensor, 0, 2, 130).find("M, N and K must be >= 1, got 0, 2, 130"), std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerTensor, 0, 2, 0).find("must be >= 1"), std::string::npos);
  EXPECT_NE(mm(int64_t{65536} * 64 + 1, ScaleKind::kPerTensor, 0, 2, 130).find("exceeds the GEMM grid"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              w158a8_matmul(q, xs, 1, packed, nullptr, ScaleKind::kPerTensor, 0, 2, 130, nullptr, y, DType::kF32,
                            nullptr);
            }).find("null operand"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w158a8_matmul_int32(q, 1, packed, 2, 130, nullptr, nullptr); }).find("null operand"),
            std::string::npos);
}

namespace {
__global__ void noop_kernel(int* out) {
  if (out) out[0] = 1;
}
}  // namespace

// A failed launch names its kernel with the file and line of the launch (cuda/launch.hpp), and leaves
// no error behind for later, unrelated checks.
TEST(W158A8Launcher, AFailedLaunchNamesItsKernelFileAndLine) {
  const int line = __LINE__ + 2;
  try {
    launch(BITQAT_HERE, "noop_kernel", noop_kernel, dim3(1), dim3(2048), nullptr, nullptr);
    FAIL() << "a block of 2048 threads was launched";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tests/cuda/w158a8_test.cpp:" + std::to_string(line) +
                       ": launch of noop_kernel: cudaErrorInvalidConfiguration"),
              std::string::npos)
        << msg;
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

namespace {

struct Problem {
  int64_t m, n, k;
  std::vector<int8_t> q;         // [M, Kp] activation codes, -128 and 127 included
  std::vector<float> xs;         // [M] activation scales
  std::vector<int8_t> codes;     // [N, K] ternary codes
  std::vector<uint32_t> packed;  // [N, words_per_row(K)]
  std::vector<float> bias;       // [N]
};

Problem make_problem(int64_t m, int64_t n, int64_t k, uint32_t seed) {
  Problem p{m, n, k, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  const int64_t kp = padded_k(k);
  p.q.assign(static_cast<size_t>(m * kp), 0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      int v = static_cast<int>(rng() % 256) - 128;
      if (i == 0) v = j % 2 ? 127 : -128;  // the int8 limits, everywhere in one row
      p.q[static_cast<size_t>(i * kp + j)] = static_cast<int8_t>(v);
    }
  }
  std::uniform_real_distribution<float> pos(0.5f, 4.0f), any(-1.0f, 1.0f);
  p.xs.resize(static_cast<size_t>(m));
  for (auto& v : p.xs) v = pos(rng) * 30.0f;
  p.codes.resize(static_cast<size_t>(n * k));
  for (auto& c : p.codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
  if (n > 1) std::fill(p.codes.begin() + k, p.codes.begin() + 2 * k, int8_t{1});  // a row of +1 only
  p.packed.resize(static_cast<size_t>(n * words_per_row(k)));
  pack_ternary_ref(p.codes.data(), n, k, p.packed.data());
  p.bias.resize(static_cast<size_t>(n));
  for (auto& v : p.bias) v = any(rng);
  return p;
}

std::string what(int64_t m, int64_t n, int64_t k) {
  return "M " + std::to_string(m) + " N " + std::to_string(n) + " K " + std::to_string(k) +
         (uses_gemv(m) ? " (GEMV)" : " (GEMM)");
}

// Round to nearest even into bf16, as a float.
float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return f;
  u = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
float from_bf16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// For each output, sum over 64-weight chunks c of |s_c sc_c| / xs + |bias|, where s_c is the chunk's
// integer dot product and sc_c its group's scale: the size of the terms the GEMV's per-group float
// additions round (bias may be null).
std::vector<double> chunk_terms(const Problem& p, const std::vector<float>& ws, int64_t groups, int64_t group,
                                const float* bias) {
  const int64_t kp = padded_k(p.k), chunks = (p.k + 63) / 64;
  std::vector<double> terms(static_cast<size_t>(p.m * p.n), 0.0);
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t r = 0; r < p.n; ++r) {
      double t = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        int64_t sc = 0;
        for (int64_t j = c * 64; j < std::min(p.k, c * 64 + 64); ++j)
          sc += p.q[static_cast<size_t>(i * kp + j)] * p.codes[static_cast<size_t>(r * p.k + j)];
        t += std::fabs(static_cast<double>(sc) * ws[static_cast<size_t>(r * groups + c * 64 / group)]);
      }
      terms[static_cast<size_t>(i * p.n + r)] =
          t / p.xs[static_cast<size_t>(i)] + (bias ? std::fabs(bias[static_cast<size_t>(r)]) : 0.0);
    }
  }
  return terms;
}

const std::vector<int64_t> kMs = {1, 2, 16, 17, 64, 65};
const std::vector<int64_t> kKs = {32, 64, 96, 128, 200, 4096, 14336};

}  // namespace

// The raw int32 accumulators: exactly the reference's, for every M around the GEMV / GEMM switch and
// every K (not a multiple of any tile included), N not a multiple of either kernel's tile.
TEST(W158A8Kernels, IntegerSumsEqualTheReference) {
  for (const int64_t m : kMs) {
    for (const int64_t k : kKs) {
      const int64_t n = uses_gemv(m) ? 13 : 72;  // GEMV: 8 columns a block; GEMM: 64
      const auto p = make_problem(m, n, k, static_cast<uint32_t>(m * 31 + k));
      std::vector<int32_t> yr(static_cast<size_t>(m * n));
      int_matmul_ref(p.q.data(), padded_k(k), p.packed.data(), m, n, k, 1, k, yr.data());
      for (const auto& cfg : harness_configs(k < 4096)) {
        sim::ScopedOptions o(cfg);
        std::vector<int32_t> y(yr.size(), static_cast<int32_t>(0x80000000u));
        w158a8_matmul_int32(p.q.data(), m, p.packed.data(), n, k, y.data(), nullptr);
        ASSERT_EQ(y, yr) << what(m, n, k) << ", " << config_name(cfg);
      }
    }
  }
}

// Scaled outputs for every scale kind, float32 and bf16. Per tensor and per channel, and the GEMM's
// per-group flushes, follow the reference's operations and order exactly: equal bit for bit. The
// GEMV adds per-group partials per 64-weight chunk, then across lanes: within the bound of those
// float additions, (chunks + groups + 4) * 2^-24 * (sum over chunks |s_c sc_c| / xs + |bias|).
TEST(W158A8Kernels, ScaledOutputsEqualTheReference) {
  struct Kind {
    ScaleKind kind;
    int64_t group;
  };
  for (const int64_t m : kMs) {
    for (const int64_t k : {32, 96, 200, 4096}) {
      const int64_t n = uses_gemv(m) ? 13 : 72, kp = padded_k(k);
      const auto p = make_problem(m, n, k, static_cast<uint32_t>(m * 17 + k));
      for (const Kind kind :
           {Kind{ScaleKind::kPerTensor, 0}, Kind{ScaleKind::kPerChannel, 0}, Kind{ScaleKind::kPerGroup, 64},
            Kind{ScaleKind::kPerGroup, 128}, Kind{ScaleKind::kPerGroup, 256}}) {
        const bool per_group = kind.kind == ScaleKind::kPerGroup;
        const int64_t groups = per_group ? scale_groups(k, kind.group) : 1;
        const int64_t stride = kind.kind == ScaleKind::kPerTensor ? 0 : (per_group ? groups : 1);
        std::mt19937 rng(static_cast<uint32_t>(k + kind.group));
        std::uniform_real_distribution<float> sd(0.001f, 0.05f);
        std::vector<float> ws(static_cast<size_t>(kind.kind == ScaleKind::kPerTensor ? 1 : n * groups));
        for (auto& v : ws) v = sd(rng);
        std::vector<int32_t> yi(static_cast<size_t>(m * n * groups));
        int_matmul_ref(p.q.data(), kp, p.packed.data(), m, n, k, groups, per_group ? kind.group : k, yi.data());
        std::vector<float> yr(static_cast<size_t>(m * n));
        epilogue_ref(yi.data(), m, n, groups, ws.data(), stride, p.xs.data(), p.bias.data(), yr.data());
        const int64_t chunks = (k + 63) / 64;
        const auto terms =
            per_group ? chunk_terms(p, ws, groups, kind.group, p.bias.data()) : std::vector<double>(yr.size(), 0.0);
        const bool exact = !per_group || !uses_gemv(m);
        const std::string name =
            what(m, n, k) + " kind " + std::to_string(static_cast<int>(kind.kind)) + " G " + std::to_string(kind.group);
        std::vector<float> first;
        for (const auto& cfg : harness_configs(k < 4096)) {
          sim::ScopedOptions o(cfg);
          std::vector<float> y(yr.size(), NAN);
          w158a8_matmul(p.q.data(), p.xs.data(), m, p.packed.data(), ws.data(), kind.kind, kind.group, n, k,
                        p.bias.data(), y.data(), DType::kF32, nullptr);
          std::vector<uint16_t> yb(yr.size(), 0x7fc0);
          w158a8_matmul(p.q.data(), p.xs.data(), m, p.packed.data(), ws.data(), kind.kind, kind.group, n, k,
                        p.bias.data(), yb.data(), DType::kBF16, nullptr);
          for (size_t i = 0; i < yr.size(); ++i) {
            const double bound = (chunks + groups + 4) * std::ldexp(1.0, -24) * terms[i];
            if (exact) {
              ASSERT_EQ(std::memcmp(&y[i], &yr[i], 4), 0) << name << " at " << i << ": " << y[i] << " vs " << yr[i];
              ASSERT_EQ(from_bf16_bits(yb[i]), bf16_round(yr[i])) << name << " bf16 at " << i;
            } else {
              ASSERT_LE(std::fabs(static_cast<double>(y[i]) - yr[i]), bound) << name << " at " << i;
              ASSERT_LE(std::fabs(static_cast<double>(from_bf16_bits(yb[i])) - yr[i]),
                        bound + std::ldexp(std::fabs(yr[i]), -8))
                  << name << " bf16 at " << i;
            }
          }
          // Whatever the order, the same bits.
          if (first.empty()) {
            first = y;
          } else {
            ASSERT_EQ(std::memcmp(first.data(), y.data(), 4 * y.size()), 0) << name << ", " << config_name(cfg);
          }
        }
      }
    }
  }
}

// K = 14336, the FFN's shape, through both kernels with per-group scales of 128 (float32 output).
TEST(W158A8Kernels, TallKPerGroupAtM1AndM65) {
  for (const int64_t m : {1, 65}) {
    const int64_t k = 14336, n = uses_gemv(m) ? 9 : 65, groups = k / 128, kp = padded_k(k);
    // Per-group scales of 128: the GEMM flushes every other K tile.
    const auto p = make_problem(m, n, k, 77);
    std::vector<float> ws(static_cast<size_t>(n * groups));
    for (size_t i = 0; i < ws.size(); ++i) ws[i] = 0.01f + 0.0001f * static_cast<float>(i % 97);
    std::vector<int32_t> yi(static_cast<size_t>(m * n * groups));
    int_matmul_ref(p.q.data(), kp, p.packed.data(), m, n, k, groups, 128, yi.data());
    std::vector<float> yr(static_cast<size_t>(m * n)), y(yr.size(), NAN);
    epilogue_ref(yi.data(), m, n, groups, ws.data(), groups, p.xs.data(), nullptr, yr.data());
    w158a8_matmul(p.q.data(), p.xs.data(), m, p.packed.data(), ws.data(), ScaleKind::kPerGroup, 128, n, k, nullptr,
                  y.data(), DType::kF32, nullptr);
    const auto terms = chunk_terms(p, ws, groups, 128, nullptr);
    for (size_t i = 0; i < yr.size(); ++i) {
      const double bound = (k / 64 + groups + 4) * std::ldexp(1.0, -24) * terms[i];
      ASSERT_LE(std::fabs(static_cast<double>(y[i]) - yr[i]), bound) << "M " << m << " at " << i;
      if (!uses_gemv(m)) {
        ASSERT_EQ(y[i], yr[i]) << "M " << m << " at " << i;
      }
    }
  }
}

// The launcher pair the packed layer runs: activation codes (with the fused RMSNorm) and absmean
// quantize-and-pack, against the references.
TEST(W158A8Kernels, QuantizeActivationsAndQuantizePackEqualTheReference) {
  for (const int64_t m : {1, 17}) {
    for (const int64_t k : {96, 200, 4096}) {
      std::mt19937 rng(static_cast<uint32_t>(m + k));
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> x(static_cast<size_t>(m * k)), nw(static_cast<size_t>(k));
      for (auto& v : x) v = nd(rng);
      for (auto& v : nw) v = 1.0f + 0.1f * nd(rng);
      const int64_t kp = padded_k(k);
      for (const bool norm : {false, true}) {
        std::vector<int8_t> qr(static_cast<size_t>(m * kp)), q(qr.size(), 99);
        std::vector<float> sr(static_cast<size_t>(m)), s(sr.size());
        quantize_activations_ref(x.data(), m, k, kp, 1e-5f, norm ? nw.data() : nullptr, 1e-6f, qr.data(), sr.data(),
                                 nullptr);
        quantize_activations(x.data(), DType::kF32, m, k, 1e-5f, norm ? nw.data() : nullptr, 1e-6f, q.data(), s.data(),
                             nullptr);
        ASSERT_EQ(q, qr) << "M " << m << " K " << k << " norm " << norm;
        ASSERT_EQ(std::memcmp(s.data(), sr.data(), 4 * s.size()), 0);
      }
      const int64_t n = 9;
      std::vector<float> w(static_cast<size_t>(n * k));
      for (auto& v : w) v = 0.02f * nd(rng);
      for (const auto kind : {ScaleKind::kPerTensor, ScaleKind::kPerChannel, ScaleKind::kPerGroup}) {
        const int64_t group = kind == ScaleKind::kPerGroup ? 64 : 0;
        const int64_t nscales = kind == ScaleKind::kPerTensor ? 1 : (group ? n * scale_groups(k, group) : n);
        std::vector<int8_t> cr(w.size()), ck(w.size());
        std::vector<float> sr(static_cast<size_t>(nscales)), sk(sr.size());
        quantize_ternary_ref(w.data(), n, k, kind, group, 1e-5f, cr.data(), sr.data());
        std::vector<uint32_t> pr(static_cast<size_t>(n * words_per_row(k))), pk(pr.size());
        pack_ternary_ref(cr.data(), n, k, pr.data());
        std::vector<double> ws(static_cast<size_t>(2 * n));
        quantize_pack_ternary(w.data(), n, k, kind, group, 1e-5f, sk.data(), ck.data(), ws.data(), pk.data(), nullptr);
        ASSERT_EQ(pk, pr) << "K " << k << " kind " << static_cast<int>(kind);
        ASSERT_EQ(std::memcmp(sk.data(), sr.data(), 4 * sk.size()), 0);
      }
    }
  }
}
