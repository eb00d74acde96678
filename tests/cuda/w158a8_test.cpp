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

// Every matmul plan that can serve M: each kernel, split-K in 1, 2 and 3 parts (parts with nothing to
// do when K is one chunk). The fused kernel starts from float activations: its own test.
std::vector<Plan> plans_for(int64_t m, ScaleKind kind) {
  std::vector<Plan> out;
  for (int kk = 0; kk < kKernelCount; ++kk) {
    if (static_cast<Kernel>(kk) == Kernel::kGemvFused) continue;
    for (const int splits : {1, 2, 3}) {
      const Plan p{static_cast<Kernel>(kk), splits};
      if (!*plan_refusal(p, m, 1, kind)) out.push_back(p);
    }
  }
  return out;
}

std::string plan_name(const Plan& p) { return std::string(kernel_name(p.kernel)) + " x " + std::to_string(p.splits); }

// The raw int32 accumulators of every plan: exactly the reference's, for every M around the GEMV / GEMM
// switch and every K (not a multiple of any tile included), N not a multiple of any kernel's tile; so
// split-K's integer sums are the unsplit kernel's bit for bit.
TEST(W158A8Kernels, IntegerSumsOfEveryPlanEqualTheReference) {
  int plans_run = 0;
  for (const int64_t m : kMs) {
    for (const int64_t k : kKs) {
      const int64_t n = m <= 16 ? 40 : 72;  // GEMV blocks cover 16 or 32 columns, GEMM tiles 64
      const auto p = make_problem(m, n, k, static_cast<uint32_t>(m * 31 + k));
      std::vector<int32_t> yr(static_cast<size_t>(m * n));
      int_matmul_ref(p.q.data(), padded_k(k), p.packed.data(), m, n, k, 1, k, yr.data());
      for (const Plan& plan : plans_for(m, ScaleKind::kPerTensor)) {
        // Tall K (4096, 14336) through each kernel in the M range it is meant for, with and without
        // split-K; every plan at every M for the shorter K.
        const bool gemv = plan.kernel == Kernel::kGemvColumn || plan.kernel == Kernel::kGemvTiled;
        if (k >= 4096 && (plan.splits == 2 || (plan.kernel != Kernel::kCublasInt8 && gemv != (m <= 16)))) continue;
        std::vector<uint8_t> ws(workspace_bytes(plan, m, n, k, ScaleKind::kPerTensor, false));
        // The orders matter for barriers and races, which the shorter K exercise as well: K = 14336
        // runs in index order only.
        auto configs = harness_configs(k < 4096);
        if (k == 14336) configs.resize(1);
        for (const auto& cfg : configs) {
          sim::ScopedOptions o(cfg);
          std::vector<int32_t> y(yr.size(), static_cast<int32_t>(0x80000000u));
          w158a8_matmul_int32_plan(plan, p.q.data(), m, p.packed.data(), nullptr, n, k, y.data(), ws.data(), ws.size(),
                                   nullptr);
          ASSERT_EQ(y, yr) << what(m, n, k) << " plan " << plan_name(plan) << ", " << config_name(cfg);
        }
        ++plans_run;
      }
    }
  }
  EXPECT_GT(plans_run, 6 * 5 * 10);
}

// Scaled outputs of every plan, every scale kind, float32 and bf16. Per tensor and per channel the
// int32 sums are exact and the epilogue is the reference's operations in its order: equal bit for
// bit; so are the tensor-core kernels' per-group flushes without split-K. The GEMVs add per-group
// partials per 64-weight chunk then across lanes, and split-K adds its parts' float sums: within the
// bound of those float additions, (chunks + groups + splits + 4) * 2^-24 * (sum over chunks
// |s_c sc_c| / xs + |bias|).
TEST(W158A8Kernels, ScaledOutputsOfEveryPlanEqualTheReference) {
  struct Kind {
    ScaleKind kind;
    int64_t group;
  };
  for (const int64_t m : {1, 16, 17, 65}) {
    for (const int64_t k : {32, 200, 1024}) {
      const int64_t n = m <= 16 ? 40 : 72, kp = padded_k(k);
      const auto p = make_problem(m, n, k, static_cast<uint32_t>(m * 17 + k));
      for (const Kind kind : {Kind{ScaleKind::kPerTensor, 0}, Kind{ScaleKind::kPerChannel, 0},
                              Kind{ScaleKind::kPerGroup, 64}, Kind{ScaleKind::kPerGroup, 192}}) {
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
        for (const Plan& plan : plans_for(m, kind.kind)) {
          const bool gemv = plan.kernel == Kernel::kGemvColumn || plan.kernel == Kernel::kGemvTiled;
          const bool exact = !per_group || (!gemv && plan.splits == 1);
          const std::string name = what(m, n, k) + " kind " + std::to_string(static_cast<int>(kind.kind)) + " G " +
                                   std::to_string(kind.group) + " plan " + plan_name(plan);
          std::vector<uint8_t> wsp(workspace_bytes(plan, m, n, k, kind.kind, false));
          std::vector<float> first;
          for (const auto& cfg : harness_configs(false)) {
            sim::ScopedOptions o(cfg);
            std::vector<float> y(yr.size(), NAN);
            w158a8_matmul_plan(plan, p.q.data(), p.xs.data(), m, p.packed.data(), nullptr, ws.data(), kind.kind,
                               kind.group, n, k, p.bias.data(), y.data(), DType::kF32, wsp.data(), wsp.size(), nullptr);
            // bf16 output: one shared store (Out), checked once per plan.
            std::vector<uint16_t> yb(yr.size(), 0x7fc0);
            if (first.empty()) {
              w158a8_matmul_plan(plan, p.q.data(), p.xs.data(), m, p.packed.data(), nullptr, ws.data(), kind.kind,
                                 kind.group, n, k, p.bias.data(), yb.data(), DType::kBF16, wsp.data(), wsp.size(),
                                 nullptr);
            }
            for (size_t i = 0; i < yr.size(); ++i) {
              const double bound = (chunks + groups + plan.splits + 4) * std::ldexp(1.0, -24) * terms[i];
              const bool bf16 = first.empty();
              if (exact) {
                ASSERT_EQ(std::memcmp(&y[i], &yr[i], 4), 0) << name << " at " << i << ": " << y[i] << " vs " << yr[i];
                if (bf16) {
                  ASSERT_EQ(from_bf16_bits(yb[i]), bf16_round(yr[i])) << name << " bf16 at " << i;
                }
              } else {
                ASSERT_LE(std::fabs(static_cast<double>(y[i]) - yr[i]), bound) << name << " at " << i;
                if (bf16) {
                  ASSERT_LE(std::fabs(static_cast<double>(from_bf16_bits(yb[i])) - yr[i]),
                            bound + std::ldexp(std::fabs(yr[i]), -8))
                      << name << " bf16 at " << i;
                }
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
}

// The default launcher runs the default plan: the first GEMV for M <= 16, the 64 x 64 GEMM above.
TEST(W158A8Kernels, TheDefaultLauncherRunsTodaysKernels) {
  for (const int64_t m : {3, 20}) {
    const int64_t n = 40, k = 200;
    const auto p = make_problem(m, n, k, 5);
    std::vector<float> ws(static_cast<size_t>(n * 4), 0.01f), y1(static_cast<size_t>(m * n)), y2(y1.size());
    w158a8_matmul(p.q.data(), p.xs.data(), m, p.packed.data(), ws.data(), ScaleKind::kPerGroup, 64, n, k, nullptr,
                  y1.data(), DType::kF32, nullptr);
    const Plan plan{m <= 16 ? Kernel::kGemvColumn : Kernel::kMma, 1};
    w158a8_matmul_plan(plan, p.q.data(), p.xs.data(), m, p.packed.data(), nullptr, ws.data(), ScaleKind::kPerGroup, 64,
                       n, k, nullptr, y2.data(), DType::kF32, nullptr, 0, nullptr);
    EXPECT_EQ(std::memcmp(y1.data(), y2.data(), 4 * y1.size()), 0) << "M " << m;
  }
}

// K = 14336, the FFN's shape, with per-group scales of 128 (float32 output), through the plans a GPU
// would pick there: the GEMVs with and without split-K at M = 1, the tensor-core kernels at M = 65.
TEST(W158A8Kernels, TallKPerGroupAtM1AndM65) {
  for (const int64_t m : {1, 65}) {
    const int64_t k = 14336, n = m == 1 ? 40 : 65, groups = k / 128, kp = padded_k(k);
    const auto p = make_problem(m, n, k, 77);
    std::vector<float> ws(static_cast<size_t>(n * groups));
    for (size_t i = 0; i < ws.size(); ++i) ws[i] = 0.01f + 0.0001f * static_cast<float>(i % 97);
    std::vector<int32_t> yi(static_cast<size_t>(m * n * groups));
    int_matmul_ref(p.q.data(), kp, p.packed.data(), m, n, k, groups, 128, yi.data());
    std::vector<float> yr(static_cast<size_t>(m * n));
    epilogue_ref(yi.data(), m, n, groups, ws.data(), groups, p.xs.data(), nullptr, yr.data());
    const auto terms = chunk_terms(p, ws, groups, 128, nullptr);
    const std::vector<Plan> plans =
        m == 1 ? std::vector<Plan>{{Kernel::kGemvColumn, 1}, {Kernel::kGemvTiled, 1}, {Kernel::kGemvTiled, 7}}
               : std::vector<Plan>{{Kernel::kMma, 1}, {Kernel::kMmaSmall, 4}, {Kernel::kMmaPipelined, 1}};
    for (const Plan& plan : plans) {
      std::vector<uint8_t> wsp(workspace_bytes(plan, m, n, k, ScaleKind::kPerGroup, false));
      std::vector<float> y(yr.size(), NAN);
      w158a8_matmul_plan(plan, p.q.data(), p.xs.data(), m, p.packed.data(), nullptr, ws.data(), ScaleKind::kPerGroup,
                         128, n, k, nullptr, y.data(), DType::kF32, wsp.data(), wsp.size(), nullptr);
      const bool exact = m > 1 && plan.splits == 1;
      for (size_t i = 0; i < yr.size(); ++i) {
        const double bound = (k / 64 + groups + plan.splits + 4) * std::ldexp(1.0, -24) * terms[i];
        ASSERT_LE(std::fabs(static_cast<double>(y[i]) - yr[i]), bound) << "plan " << plan_name(plan) << " at " << i;
        if (exact) {
          ASSERT_EQ(y[i], yr[i]) << "plan " << plan_name(plan) << " at " << i;
        }
      }
    }
  }
}

// One token with its activation quantization fused into the GEMV: the codes quantize_activations
// computes (float32 and bf16 inputs, with and without the RMSNorm), then the matmul; per tensor and
// per channel bit for bit with the reference, per group within the bound; with and without split-K.
TEST(W158A8Kernels, FusedOneTokenEqualsQuantizeThenMatmul) {
  for (const int64_t k : {96, 200, 4096, 14336}) {
    const int64_t n = 40, kp = padded_k(k);
    std::mt19937 rng(static_cast<uint32_t>(k));
    std::normal_distribution<float> nd(0.0f, 1.5f);
    std::vector<float> x(static_cast<size_t>(k)), nw(static_cast<size_t>(k)), bias(static_cast<size_t>(n));
    for (auto& v : x) v = nd(rng);
    for (auto& v : nw) v = 1.0f + 0.2f * nd(rng);
    for (auto& v : bias) v = nd(rng);
    std::vector<int8_t> codes(static_cast<size_t>(n * k));
    for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    std::vector<uint32_t> packed(static_cast<size_t>(n * words_per_row(k)));
    pack_ternary_ref(codes.data(), n, k, packed.data());
    std::vector<uint16_t> xb(x.size());
    std::vector<float> xbf(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      xbf[i] = bf16_round(x[i]);
      uint32_t u;
      std::memcpy(&u, &xbf[i], 4);
      xb[i] = static_cast<uint16_t>(u >> 16);
    }
    for (const bool bf16 : {false, true}) {
      for (const bool norm : {false, true}) {
        std::vector<int8_t> q(static_cast<size_t>(kp));
        float xs = 0;
        quantize_activations_ref(bf16 ? xbf.data() : x.data(), 1, k, kp, 1e-5f, norm ? nw.data() : nullptr, 1e-6f,
                                 q.data(), &xs, nullptr);
        for (const auto kind : {ScaleKind::kPerChannel, ScaleKind::kPerGroup}) {
          const int64_t group = kind == ScaleKind::kPerGroup ? 128 : 0;
          const int64_t groups = group ? scale_groups(k, group) : 1;
          std::vector<float> ws(static_cast<size_t>(n * groups));
          for (size_t i = 0; i < ws.size(); ++i) ws[i] = 0.02f + 0.001f * static_cast<float>(i % 13);
          std::vector<int32_t> yi(static_cast<size_t>(n * groups));
          int_matmul_ref(q.data(), kp, packed.data(), 1, n, k, groups, group ? group : k, yi.data());
          std::vector<float> yr(static_cast<size_t>(n));
          epilogue_ref(yi.data(), 1, n, groups, ws.data(), groups, &xs, bias.data(), yr.data());
          for (const int splits : {1, 3}) {
            const Plan plan{Kernel::kGemvFused, splits};
            std::vector<uint8_t> wsp(workspace_bytes(plan, 1, n, k, kind, false));
            std::vector<float> y(static_cast<size_t>(n), NAN);
            w158a8_linear_m1(bf16 ? static_cast<const void*>(xb.data()) : x.data(), bf16 ? DType::kBF16 : DType::kF32,
                             k, 1e-5f, norm ? nw.data() : nullptr, 1e-6f, packed.data(), ws.data(), kind, group, n,
                             bias.data(), y.data(), DType::kF32, splits, wsp.data(), wsp.size(), nullptr);
            for (int64_t i = 0; i < n; ++i) {
              const std::string name = "K " + std::to_string(k) + " bf16 " + std::to_string(bf16) + " norm " +
                                       std::to_string(norm) + " kind " + std::to_string(static_cast<int>(kind)) +
                                       " splits " + std::to_string(splits) + " col " + std::to_string(i);
              if (kind == ScaleKind::kPerGroup) {
                double terms = std::fabs(bias[static_cast<size_t>(i)]);
                for (int64_t g = 0; g < groups; ++g) {
                  for (int64_t c = g * 2; c < std::min((k + 63) / 64, g * 2 + 2); ++c) {  // 64-weight chunks
                    int64_t sc = 0;
                    for (int64_t j = c * 64; j < std::min(k, c * 64 + 64); ++j)
                      sc += q[static_cast<size_t>(j)] * codes[static_cast<size_t>(i * k + j)];
                    terms += std::fabs(static_cast<double>(sc) * ws[static_cast<size_t>(i * groups + g)]) / xs;
                  }
                }
                const double bound = ((k + 63) / 64 + groups + splits + 4) * std::ldexp(1.0, -24) * terms;
                ASSERT_LE(std::fabs(static_cast<double>(y[static_cast<size_t>(i)]) - yr[static_cast<size_t>(i)]), bound)
                    << name;
              } else {
                ASSERT_EQ(y[static_cast<size_t>(i)], yr[static_cast<size_t>(i)]) << name;
              }
            }
          }
        }
      }
    }
  }
}

// cuBLAS's int8 GEMM on weights expanded once (expand_packed) equals the reference, with the
// expansion given or made in the workspace; plans refuse what they cannot serve, and a short
// workspace is refused before any launch.
TEST(W158A8Kernels, ExpandedWeightsPlanRefusalsAndWorkspace) {
  const int64_t m = 5, n = 24, k = 300, kp = padded_k(k);
  const auto p = make_problem(m, n, k, 9);
  std::vector<int8_t> expanded(static_cast<size_t>(n * kp), 99);
  expand_packed(p.packed.data(), n, k, expanded.data(), nullptr);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < kp; ++j) {
      ASSERT_EQ(expanded[static_cast<size_t>(r * kp + j)], j < k ? p.codes[static_cast<size_t>(r * k + j)] : 0);
    }
  }
  std::vector<int32_t> yr(static_cast<size_t>(m * n)), y(yr.size());
  int_matmul_ref(p.q.data(), kp, p.packed.data(), m, n, k, 1, k, yr.data());
  const Plan cublas{Kernel::kCublasInt8, 1};
  std::vector<uint8_t> ws(workspace_bytes(cublas, m, n, k, ScaleKind::kPerTensor, true));
  w158a8_matmul_int32_plan(cublas, p.q.data(), m, p.packed.data(), expanded.data(), n, k, y.data(), ws.data(),
                           ws.size(), nullptr);
  EXPECT_EQ(y, yr);
  EXPECT_GT(workspace_bytes(cublas, m, n, k, ScaleKind::kPerTensor, false), ws.size());
  EXPECT_STREQ(plan_refusal(cublas, m, k, ScaleKind::kPerGroup),
               "cublas_int8 takes per-tensor or per-channel scales only");
  EXPECT_STREQ(plan_refusal(Plan{Kernel::kGemvTiled, 2}, 17, k, ScaleKind::kPerTensor), "the GEMVs take M <= 16");
  EXPECT_STREQ(plan_refusal(Plan{Kernel::kMma, 65}, 17, k, ScaleKind::kPerTensor), "splits must be in [1, 64]");
  EXPECT_STREQ(plan_refusal(Plan{Kernel::kGemvColumn, 2}, 1, k, ScaleKind::kPerTensor), "gemv_column does not split K");
  EXPECT_STREQ(plan_refusal(Plan{Kernel::kGemvFused, 2}, 2, k, ScaleKind::kPerTensor),
               "gemv_fused takes one token (M = 1)");
  EXPECT_STREQ(plan_refusal(Plan{Kernel::kGemvFused, 1}, 1, 40000, ScaleKind::kPerTensor),
               "gemv_fused takes K <= 32768");
  std::string msg;
  try {
    w158a8_matmul_int32_plan(Plan{Kernel::kMmaSmall, 3}, p.q.data(), m, p.packed.data(), nullptr, n, k, y.data(),
                             ws.data(), 8, nullptr);
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("plan mma_small x 3 needs"), std::string::npos) << msg;
  msg.clear();
  try {
    std::vector<float> yf(static_cast<size_t>(m * n)), wsc(1, 0.1f);
    w158a8_matmul_plan(cublas, p.q.data(), p.xs.data(), m, p.packed.data(), nullptr, wsc.data(), ScaleKind::kPerGroup,
                       64, n, k, nullptr, yf.data(), DType::kF32, nullptr, 0, nullptr);
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("plan cublas_int8 x 1 cannot serve M = 5: cublas_int8 takes per-tensor or per-channel"),
            std::string::npos)
      << msg;
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
