// The W1.58A8 ops against the references: CPU paths and operand validation here, GPU kernels over
// grids of shapes when a GPU is present (integer results exactly equal to the CPU reference; float
// epilogues within a bound derived from the number of float operations; outputs poisoned first).
#include "bitlinear/ops/w158a8_ops.hpp"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "bitlinear/quant_kernels.hpp"
#include "bitlinear/quantized_linear.hpp"
#include "cuda/sim/emulated.hpp"
#include "tests/emulated_kernels.hpp"

using namespace bitqat::bitlinear;
using namespace bitqat::bitlinear::ops;

namespace {

bool have_gpu() { return torch::cuda::is_available(); }

float rel_err(const at::Tensor& a, const at::Tensor& b) {
  const auto d = (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<float>();
  return d / std::max(1e-6f, b.to(at::kFloat).abs().max().item<float>());
}

}  // namespace

TEST(W158A8Cpu, ActivationCodesEqualTheBitLinearQuantizer) {
  at::manual_seed(1);
  const auto x = at::randn({5, 100}) * 3;
  const auto q = quantize_activations_int8(x);
  const auto ref = quantize_activation(x, ActQuantSpec{});
  EXPECT_EQ(q.q.sizes(), (std::vector<int64_t>{5, 128}));
  EXPECT_TRUE(q.q.narrow(1, 0, 100).equal(ref.codes));
  EXPECT_TRUE(q.q.narrow(1, 100, 28).eq(0).all().item<bool>());
  EXPECT_TRUE(q.scales.equal(ref.scales.view({5})));  // one function computes both
}

TEST(W158A8Cpu, PackedMatmulEqualsTheFakeQuantizedLinear) {
  at::manual_seed(2);
  for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
    const auto w = at::randn({33, 200});
    const auto x = at::randn({7, 200});
    const auto bias = at::randn({33});
    const auto p = pack_ternary(w, g, 64);
    WeightQuantSpec ws;
    ws.granularity = g;
    ws.group_size = 64;
    const auto qw = quantize_weight(w, ws);
    EXPECT_TRUE(unpack_codes(p).equal(qw.codes)) << to_string(g);
    EXPECT_TRUE(p.scales.equal(qw.scales.to(at::kFloat))) << to_string(g);
    const auto y = w158a8_matmul(quantize_activations_int8(x), p, bias, at::kFloat);
    // Same codes, exact integer sums, and the epilogue's operations in the same order: bit-identical
    // to the fully quantized BitLinear's computation (the fake-quant value within float rounding is
    // bitlinear/quantized_linear_test's subject).
    EXPECT_TRUE(y.equal(quantized_linear(x, w, bias, ws, ActQuantSpec{}))) << to_string(g);
    const auto xq = dequantize_activation(quantize_activation(x, ActQuantSpec{}));
    const auto want = at::linear(xq, dequantize_weight(qw), bias);
    EXPECT_LT(rel_err(y, want), 1e-5) << to_string(g);
  }
  EXPECT_THROW(pack_ternary(at::randn({4, 128}), Granularity::kPerGroup, 100), c10::Error);
}

TEST(W158A8Cpu, PackedBitLinearEqualsBitLinearAtLambdaOneAndIsSmall) {
  at::manual_seed(3);
  BitLinearOptions o(256, 64);
  o.bias = true;
  o.sub_norm = true;
  o.quant.weight.granularity = Granularity::kPerChannel;
  BitLinear layer(o);
  PackedBitLinear packed(*layer);
  const auto x = at::randn({2, 3, 256});
  // Fused SubLN, codes, integer sums and epilogue are the same operations on both sides.
  EXPECT_TRUE(packed->forward(x).equal(layer->forward(x).detach()));
  // 2 bits per weight plus one float per row, against 2 bytes per weight in bf16.
  EXPECT_EQ(packed->weight_bytes(), 64 * 256 / 4 + 64 * 4);
  EXPECT_GT(static_cast<double>(64 * 256 * 2) / static_cast<double>(packed->weight_bytes()), 7.0);
  int64_t params = 0;
  for (const auto& p : packed->parameters()) params += p.numel();
  EXPECT_EQ(params, 0);  // no latent full-precision weights
}

// Scales followed in memory by NaN: a kernel reading a scale past the tensor (the K padding of the
// last row) turns its output NaN, so an out-of-bounds read fails the test even without memcheck.
at::Tensor with_nan_tail(const at::Tensor& scales) {
  auto buf = at::full({scales.numel() + 64}, std::numeric_limits<float>::quiet_NaN(), scales.options());
  buf.narrow(0, 0, scales.numel()).copy_(scales.flatten());
  return buf.narrow(0, 0, scales.numel()).view(scales.sizes());
}

class W158A8Gpu : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

// Small shapes around every boundary (M 16/17, N not a multiple of the tile, K <= 64 and K mod 128 in
// 1..64 where the row padding holds a whole 64-weight chunk without a scale group). Run under
// compute-sanitizer memcheck by launch/gpu_check.sh.
TEST_P(W158A8Gpu, KernelsEqualTheReferences) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto [m, n, k] = GetParam();
  at::manual_seed(static_cast<uint64_t>(m * 131 + n * 7 + k));
  const auto x = at::randn({m, k}) * 2;
  const auto w = at::randn({n, k});
  const auto bias = at::randn({n});
  const auto dev = at::Device(at::kCUDA, 0);
  const float nan = std::numeric_limits<float>::quiet_NaN();

  const auto qc = quantize_activations_int8(x);
  const auto qg = quantize_activations_int8(x.to(dev));
  EXPECT_TRUE(qg.q.cpu().equal(qc.q));
  EXPECT_TRUE(qg.scales.cpu().equal(qc.scales));
  struct Kind {
    Granularity g;
    int64_t group;
  };
  for (const Kind kind :
       {Kind{Granularity::kPerTensor, 0}, Kind{Granularity::kPerChannel, 0}, Kind{Granularity::kPerGroup, 64},
        Kind{Granularity::kPerGroup, 128}, Kind{Granularity::kPerGroup, 256}}) {
    const auto g = kind.g;
    const std::string what = to_string(g) + " G " + std::to_string(kind.group) + " M " + std::to_string(m) + " N " +
                             std::to_string(n) + " K " + std::to_string(k);
    const auto pc = pack_ternary(w, g, kind.group > 0 ? kind.group : 128);
    // Integer accumulators: exactly equal, on the same packed weights.
    PackedTernary pg = pc;
    pg.packed = pc.packed.to(dev);
    pg.scales = with_nan_tail(pc.scales.to(dev));
    if (g == Granularity::kPerTensor) {
      auto yi = at::full({m, n}, std::numeric_limits<int32_t>::min(), at::TensorOptions().device(dev).dtype(at::kInt));
      w158a8_matmul_int32(qg, pg, yi);
      const auto yr = w158a8_matmul_int32(qc, pc);
      EXPECT_TRUE(yi.cpu().equal(yr)) << what << " worst " << (yi.cpu() - yr).abs().max().item<int>();
    }
    auto yf = at::full({m, n}, nan, at::TensorOptions().device(dev));
    w158a8_matmul_out(qg, pg, bias.to(dev), yf);
    const auto yr = w158a8_matmul(qc, pc, bias, at::kFloat);
    const float err = rel_err(yf.cpu(), yr);
    std::printf("%s: worst relative error %.3g\n", what.c_str(), err);
    EXPECT_TRUE(yf.isfinite().all().item<bool>()) << what << ": an unwritten or NaN output";
    EXPECT_LT(err, 1e-5) << what;
    auto yb = at::full({m, n}, nan, at::TensorOptions().device(dev).dtype(at::kBFloat16));
    w158a8_matmul_out(qg, pg, bias.to(dev), yb);
    EXPECT_TRUE(yb.isfinite().all().item<bool>()) << what << ": an unwritten or NaN bf16 output";
    EXPECT_LT(rel_err(yb.cpu(), yr), 1e-2) << what;
    // GPU quantize-and-pack: the same canonical sums, so the same codes and bit-identical scales.
    const auto pk = pack_ternary(w.to(dev), g, kind.group > 0 ? kind.group : 128);
    EXPECT_TRUE(unpack_codes(pk).cpu().equal(unpack_codes(pc))) << what;
    EXPECT_TRUE(pk.scales.cpu().equal(pc.scales)) << what;
  }
}

// Every code the GPU computes itself equals the CPU's (cuda/quant_codes.hpp): activations with and
// without the fused SubLN (float32 and bf16 inputs, NaN rows), RMSNorm outputs, ternary and binary
// weight codes and scales at every granularity.
TEST(W158A8GpuCodes, EqualTheCpuCodesBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto dev = at::Device(at::kCUDA, 0);
  at::manual_seed(9);
  for (int64_t k : {1, 63, 256, 1000, 4097}) {
    auto x = at::randn({7, k}) * 3;
    x[3][0] = std::numeric_limits<float>::quiet_NaN();
    const auto nw = at::rand({k}) + 0.5;
    for (const bool bf16 : {false, true}) {
      const auto xin = bf16 ? x.to(at::kBFloat16) : x;
      for (const bool norm : {false, true}) {
        const auto c = kernels::quantize_rows(xin.to(at::kFloat), 1e-5, 8, -1, norm ? nw : at::Tensor(), 1e-6);
        const auto g = kernels::quantize_rows(xin.to(dev), 1e-5, 8, -1, norm ? nw.to(dev) : at::Tensor(), 1e-6);
        EXPECT_TRUE(g.codes.cpu().equal(c.codes)) << "K " << k << " bf16 " << bf16 << " norm " << norm;
        EXPECT_TRUE(g.scales.cpu().equal(c.scales.to(at::kFloat)) ||
                    (g.scales.cpu().isnan().equal(c.scales.isnan()) &&
                     g.scales.cpu().nan_to_num().equal(c.scales.nan_to_num())))
            << "K " << k;
        EXPECT_TRUE(std::isnan(g.scales[3].item<float>()));
      }
      const auto [yc, rc] = kernels::rms_norm(xin.to(at::kFloat), nw, 1e-6);
      const auto [yg, rg] = kernels::rms_norm(xin.to(dev), nw.to(dev), 1e-6);
      EXPECT_TRUE(yg.cpu().nan_to_num().equal(yc.nan_to_num())) << "K " << k;
    }
    const auto w = at::randn({33, k}) * 0.02;
    for (const bool binary : {false, true}) {
      for (int64_t group : {int64_t{1}, int64_t{64}, int64_t{100}, k}) {
        const auto c = kernels::weight_codes(w, group, false, binary, 1e-5);
        const auto g = kernels::weight_codes(w.to(dev), group, false, binary, 1e-5);
        EXPECT_TRUE(g.codes.cpu().equal(c.codes) && g.gamma.cpu().equal(c.gamma)) << "K " << k << " G " << group;
        if (binary) {
          EXPECT_TRUE(g.mean.cpu().equal(c.mean));
        }
      }
      const auto c = kernels::weight_codes(w, 0, true, binary, 1e-5);
      const auto g = kernels::weight_codes(w.to(dev), 0, true, binary, 1e-5);
      EXPECT_TRUE(g.codes.cpu().equal(c.codes) && g.gamma.cpu().equal(c.gamma)) << "K " << k << " per tensor";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, W158A8Gpu,
                         ::testing::Combine(::testing::Values(1, 3, 16, 17, 64, 100), ::testing::Values(1, 8, 65, 200),
                                            ::testing::Values(32, 64, 100, 130, 192, 256, 300)));

TEST(W158A8GpuLinear, TrainingPathMatchesFakeQuantForwardAndBackward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(4);
  const auto dev = at::Device(at::kCUDA, 0);
  BitLinearOptions o(256, 96);
  o.bias = true;
  BitLinear fast(o), ref(o);
  {
    at::NoGradGuard g;
    ref->weight.copy_(fast->weight);
    ref->bias.copy_(fast->bias);
  }
  fast->to(dev);
  ASSERT_EQ(install_training_kernels(*fast), 1);
  const auto x = at::randn({4, 256}).to(dev).requires_grad_();
  const auto xr = x.detach().cpu().requires_grad_();
  ASSERT_TRUE(cuda_fast_path_applicable(*fast, x));
  const auto y = fast->forward(x);
  const auto yr = ref->forward(xr);
  EXPECT_LT(rel_err(y.detach().cpu(), yr.detach()), 1e-5);
  const auto up = at::randn({4, 96});
  (y * up.to(dev)).sum().backward();
  (yr * up).sum().backward();
  // bf16 backward matmuls against the fp32 fake-quant path.
  EXPECT_LT(rel_err(x.grad().cpu(), xr.grad()), 2e-2);
  EXPECT_LT(rel_err(fast->weight.grad().cpu(), ref->weight.grad()), 2e-2);
  EXPECT_LT(rel_err(fast->bias.grad().cpu(), ref->bias.grad()), 1e-5);
  // The packed weights are reused until the weight changes.
  const auto packed = training_kernel_cache(*fast);
  fast->forward(x);
  EXPECT_TRUE(training_kernel_cache(*fast).is_same(packed));
  {
    at::NoGradGuard g;
    fast->weight.add_(0.01);
  }
  fast->forward(x);
  EXPECT_FALSE(training_kernel_cache(*fast).is_same(packed));
}

TEST(W158A8GpuLinear, AutocastGivesBf16OutputsWithMatchingGradients) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(5);
  const auto dev = at::Device(at::kCUDA, 0);
  BitLinear fast(BitLinearOptions(128, 64)), ref(BitLinearOptions(128, 64));
  {
    at::NoGradGuard g;
    ref->weight.copy_(fast->weight);
  }
  fast->to(dev);
  ASSERT_EQ(install_training_kernels(*fast), 1);
  const auto x = at::randn({8, 128}).to(dev).requires_grad_();
  const auto xr = x.detach().cpu().requires_grad_();
  at::Tensor y;
  {
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    y = fast->forward(x);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  const auto yr = ref->forward(xr);
  // The int8 x ternary product is exact; one bf16 rounding of the output (2^-8 relative).
  EXPECT_LT(rel_err(y.detach().cpu().to(at::kFloat), yr.detach()), 4e-3);
  const auto up = at::randn({8, 64});
  (y.to(at::kFloat) * up.to(dev)).sum().backward();
  (yr * up).sum().backward();
  EXPECT_EQ(x.grad().scalar_type(), at::kFloat);
  EXPECT_LT(rel_err(x.grad().cpu(), xr.grad()), 2e-2);
  EXPECT_LT(rel_err(fast->weight.grad().cpu(), ref->weight.grad()), 2e-2);
}

// ---- operand validation (CPU: the checks run before any device work) ----------------------------

namespace {

// Expects a c10::Error whose message holds `needle`.
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {
void every_operand_is_checked() {
  at::manual_seed(12);
  const auto x = quantize_activations_int8(at::randn({3, 130}));
  const auto w = pack_ternary(at::randn({5, 130}), Granularity::kPerGroup, 64);
  ASSERT_EQ(w158a8_matmul(x, w, {}, at::kFloat).sizes(), (std::vector<int64_t>{3, 5}));
  auto call = [&](QuantizedTokens xx, PackedTernary ww) { return [=] { w158a8_matmul(xx, ww, {}, at::kFloat); }; };
  {
    auto b = x;
    b.scales = b.scales.to(at::kDouble);
    expect_error(call(b, w), "activation scales must be float32");
    b = x;
    b.scales = at::ones({2});
    expect_error(call(b, w), "2 activation scales for M = 3");
    b = x;
    b.q = b.q.to(at::kInt);
    expect_error(call(b, w), "activation codes must be int8");
    b = x;
    b.q = b.q.narrow(1, 0, 130);
    expect_error(call(b, w), "activation codes must be [M, 256]");
    b = x;
    b.q = at::zeros({256, 3}, at::kChar).t();
    expect_error(call(b, w), "must be contiguous");
    b = x;
    b.scales = at::empty({3}, at::TensorOptions().device(at::kMeta));
    expect_error(call(b, w), "different devices");
    b = x;
    b.k = 129;
    expect_error(call(b, w), "activations have K = 129");
  }
  {
    auto b = w;
    b.group = 0;
    expect_error(call(x, b), "group size must be a positive multiple of 64, got 0");
    b = w;
    b.group = 96;
    expect_error(call(x, b), "got 96");
    b = w;
    b.scales = b.scales.narrow(1, 0, 2);
    expect_error(call(x, b), "10 weight scales, expected 15");
    b = w;
    b.scales = b.scales.to(at::kBFloat16);
    expect_error(call(x, b), "weight scales must be float32");
    b = w;
    b.scales = at::ones({3, 5}).t();
    expect_error(call(x, b), "must be contiguous");
    b = w;
    b.packed = b.packed.to(at::kLong);
    expect_error(call(x, b), "packed weight must be int32");
    b = w;
    b.packed = b.packed.narrow(0, 0, 4);
    expect_error(call(x, b), "packed weight must be [5, 16]");
    b = w;
    b.kind = static_cast<bitqat::cuda::ScaleKind>(7);
    expect_error(call(x, b), "unknown scale kind 7");
    b = w;
    b.packed = at::Tensor();
    expect_error(call(x, b), "packed weight is empty");
  }
  expect_error([&] { w158a8_matmul(x, w, at::ones({4}), at::kFloat); }, "bias has 4 entries, N = 5");
  expect_error([&] { w158a8_matmul(x, w, {}, at::kHalf); }, "output must be float32 or bfloat16");
  auto out = at::empty({3, 4});
  expect_error([&] { w158a8_matmul_out(x, w, {}, out); }, "output must be a contiguous [3, 5]");
  out = at::empty({3, 5}, at::kInt);
  expect_error([&] { w158a8_matmul_out(x, w, {}, out); }, "output dtype Int");
  expect_error([&] { w158a8_matmul_int32(x, w, at::empty({3, 5})); }, "output dtype Float");
  // An empty batch is valid and launches nothing.
  auto none = x;
  none.q = x.q.narrow(0, 0, 0);
  none.scales = x.scales.narrow(0, 0, 0);
  EXPECT_EQ(w158a8_matmul(none, w, {}, at::kFloat).sizes(), (std::vector<int64_t>{0, 5}));
}
}  // namespace

TEST(W158A8Validation, EveryOperandIsCheckedWithAClearError) { every_operand_is_checked(); }

// A NaN or infinity in a token gives that token a non-finite output and leaves the others finite, on
// the CPU and (when present) on the GPU alike: the trainer's non-finite-step guard sees the same.
TEST(W158A8NonFinite, ANonFiniteTokenGivesANonFiniteOutputRowOnEveryDevice) {
  at::manual_seed(13);
  std::vector<at::Device> devices{at::kCPU};
  if (have_gpu()) devices.emplace_back(at::kCUDA, 0);
  for (const auto dev : devices) {
    for (const bool norm : {false, true}) {
      for (const auto dtype : {at::kFloat, at::kBFloat16}) {
        auto x = at::randn({20, 200});
        x[2][7] = std::numeric_limits<float>::quiet_NaN();
        x[5][199] = std::numeric_limits<float>::infinity();
        x[17][0] = -std::numeric_limits<float>::infinity();
        const auto nw = norm ? (at::rand({200}) + 0.5).to(dev) : at::Tensor();
        for (const int64_t m : {int64_t{6}, int64_t{20}}) {  // GEMV and GEMM on a GPU
          const auto xq = quantize_activations_int8(x.narrow(0, 0, m).to(dev, dtype), nw);
          const auto w = pack_ternary(at::randn({70, 200}).to(dev), Granularity::kPerGroup, 64);
          const auto y = w158a8_matmul(xq, w, {}, at::kFloat).cpu();
          const auto row_finite = y.isfinite().all(1);
          for (int64_t i = 0; i < m; ++i) {
            const bool bad = i == 2 || i == 5 || i == 17;
            EXPECT_EQ(row_finite[i].item<bool>(), !bad)
                << dev << " norm " << norm << " " << dtype << " M " << m << " row " << i;
            if (bad) {
              EXPECT_FALSE(y[i].isfinite().any().item<bool>()) << dev << " row " << i << " is partly finite";
            }
          }
        }
      }
    }
  }
}

// ---- the GPU test grid -------------------------------------------------------------------------

namespace {

// Dequantized weight [N, K] in double on the device: code * its scale (exact in double).
at::Tensor dequantized_double(const PackedTernary& p, const at::Tensor& codes) {
  const auto c = codes.to(at::kDouble);
  const auto s = p.scales.to(at::kDouble);
  if (p.kind == bitqat::cuda::ScaleKind::kPerTensor) return c * s.view({1, 1});
  if (p.kind == bitqat::cuda::ScaleKind::kPerChannel) return c * s.view({p.n, 1});
  const int64_t groups = bitqat::cuda::scale_groups(p.k, p.group);
  return c * s.view({p.n, groups}).repeat_interleave(p.group, 1).narrow(1, 0, p.k);
}

}  // namespace

// K up to 14336, N >= 4096 (and N not a multiple of the tile), M across the GEMV / GEMM switch and the
// tile sizes, float32 and bf16 inputs, with and without the fused RMSNorm, per-tensor, per-channel and
// group 64 / 128 / 256 scales, float32 and bf16 outputs. Fresh random data each run (the seed is
// printed). Every output element is checked: int32 results exactly against an exact double matmul on
// the device, float outputs within a bound derived from the kernel's float operations; sampled rows
// are checked against the CPU (codes, scales and the int32 results exactly, the float reference).
// Outputs are poisoned (NaN / INT_MIN) before each launch, so an unwritten element fails.
TEST(W158A8GpuGrid, LargeShapesEqualTheReferences) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto dev = at::Device(at::kCUDA, 0);
  const uint64_t seed = std::random_device{}();
  std::printf("W158A8GpuGrid seed %llu\n", static_cast<unsigned long long>(seed));
  at::manual_seed(seed);
  std::mt19937_64 rng(seed);
  const auto on = at::TensorOptions().device(dev);
  const double u = std::ldexp(1.0, -24), u_bf16 = std::ldexp(1.0, -8);
  struct Kind {
    Granularity g;
    int64_t group;
  };
  const std::vector<Kind> kinds{{Granularity::kPerTensor, 0},
                                {Granularity::kPerChannel, 0},
                                {Granularity::kPerGroup, 64},
                                {Granularity::kPerGroup, 128},
                                {Granularity::kPerGroup, 256}};
  // (N, K): many K iterations; K mod 128 = 64 and = 4 (the padded chunk / tile); K <= 64.
  const std::vector<std::pair<int64_t, int64_t>> nks{{4096, 14336}, {4100, 4160}, {4096, 4100}, {4104, 40}};
  const std::vector<int64_t> ms{1, 2, 4, 8, 16, 17, 32, 64, 128, 512, 4096};
  double worst_ratio = 0.0;
  for (const auto& [n, k] : nks) {
    const auto w = at::randn({n, k}, on) * 0.02;
    const auto bias = at::randn({n}, on);
    const auto nw = at::rand({k}, on) + 0.5;
    const auto bias_d = bias.to(at::kDouble);
    for (const auto& kind : kinds) {
      auto p = pack_ternary(w, kind.g, kind.group > 0 ? kind.group : 128);
      p.scales = with_nan_tail(p.scales);
      const auto codes = unpack_codes(p);  // the CPU reference's reading of the packed words
      const auto codes_d = codes.to(at::kDouble);
      const auto wd = dequantized_double(p, codes);
      const auto wd_cpu = wd.cpu(), codes_d_cpu = codes_d.cpu();
      const int64_t float_ops = (k + 63) / 64 + 5 + 4;  // chunk / group sums, shuffles, epilogue
      for (size_t mi = 0; mi < ms.size(); ++mi) {
        const int64_t m = ms[mi];
        for (int variant = 0; variant < 4; ++variant) {
          const bool bf16 = variant & 1, norm = variant & 2;
          const std::string what = fmt::format("M {} N {} K {} {} G {} {} {}", m, n, k, to_string(kind.g), kind.group,
                                               bf16 ? "bf16" : "f32", norm ? "norm" : "plain");
          // Tokens of different magnitudes, a few outliers.
          auto x = at::randn({m, k}, on) * at::exp(at::randn({m, 1}, on));
          x.view(-1).index_put_({at::randint(0, m * k, {std::max<int64_t>(1, m * k / 4096)}, on.dtype(at::kLong))},
                                at::randn({1}, on) * 20);
          const auto xin = bf16 ? x.to(at::kBFloat16) : x;
          const auto xq = quantize_activations_int8(xin, norm ? nw : at::Tensor());
          // Sampled rows against the CPU quantizer (fused SubLN included): identical codes and scales.
          std::vector<int64_t> rows{0, m - 1, static_cast<int64_t>(rng() % static_cast<uint64_t>(m))};
          const auto ridx = at::tensor(rows, at::kLong);
          const auto xq_cpu =
              quantize_activations_int8(xin.cpu().index_select(0, ridx), norm ? nw.cpu() : at::Tensor());
          ASSERT_TRUE(xq.q.cpu().index_select(0, ridx).equal(xq_cpu.q)) << what << ": codes differ from the CPU";
          ASSERT_TRUE(xq.scales.cpu().index_select(0, ridx).equal(xq_cpu.scales)) << what << ": scales differ";
          const auto qd = xq.q.narrow(1, 0, k).to(at::kDouble);
          // Integers (scale-independent: once per kind-free variant).
          if (kind.g == Granularity::kPerTensor) {
            auto yi = at::full({m, n}, std::numeric_limits<int32_t>::min(), on.dtype(at::kInt));
            w158a8_matmul_int32(xq, p, yi);
            const auto want = at::matmul(qd, codes_d.t());  // exact: integers far below 2^53
            ASSERT_TRUE(yi.to(at::kDouble).equal(want))
                << what << ": int32 results differ, worst " << (yi.to(at::kDouble) - want).abs().max().item<double>();
            const auto want_cpu = at::matmul(xq_cpu.q.narrow(1, 0, k).to(at::kDouble), codes_d_cpu.t());
            ASSERT_TRUE(yi.cpu().index_select(0, ridx).to(at::kDouble).equal(want_cpu)) << what << " (CPU rows)";
          }
          // Float epilogue: the value in double, and the bound on the kernel's float rounding.
          const auto xs = xq.scales.to(at::kDouble).unsqueeze(1);
          const auto ref = at::matmul(qd, wd.t()) / xs + bias_d;
          const auto mag = at::matmul(qd.abs(), wd.abs().t()) / xs.abs() + bias_d.abs();
          const auto tol = mag * (static_cast<double>(float_ops) * u);
          if (mi % 4 == static_cast<size_t>(variant)) {  // the device's double reference against the CPU's
            const auto ref_cpu = at::matmul(xq_cpu.q.narrow(1, 0, k).to(at::kDouble), wd_cpu.t()) /
                                     xq_cpu.scales.to(at::kDouble).unsqueeze(1) +
                                 bias_d.cpu();
            // Both are double sums of the same exact products in different orders.
            const auto d = (ref.cpu().index_select(0, ridx) - ref_cpu).abs();
            ASSERT_TRUE(d.le(mag.cpu().index_select(0, ridx) * (static_cast<double>(k) * 1e-16)).all().item<bool>())
                << what << ": the device's double reference differs from the CPU's";
          }
          for (const auto out_dtype : {at::kFloat, at::kBFloat16}) {
            auto y = at::full({m, n}, std::numeric_limits<float>::quiet_NaN(), on.dtype(out_dtype));
            w158a8_matmul_out(xq, p, bias, y);
            const auto err = (y.to(at::kDouble) - ref).abs();
            const auto t = out_dtype == at::kFloat ? tol : tol + (ref.abs() + tol) * u_bf16;
            const bool ok = err.le(t).all().item<bool>();  // NaN (unwritten) compares false
            const double ratio = (err / t.clamp_min(1e-300)).max().item<double>();
            if (out_dtype == at::kFloat) worst_ratio = std::max(worst_ratio, ratio);
            ASSERT_TRUE(ok) << what << " out " << out_dtype << ": error / bound " << ratio
                            << (y.isnan().any().item<bool>() ? " (NaN: unwritten or out-of-bounds scale)" : "");
          }
        }
      }
    }
  }
  std::printf("W158A8GpuGrid: worst float32 error / derived bound %.3g\n", worst_ratio);
}

// quant.activation.eps reaches the training fast path: with a large floor every small-magnitude token
// gets s = 127 / eps, which only the configured eps reproduces (the fake-quant path is the reference).
TEST(W158A8GpuLinear, TrainingPathHonoursTheActivationEps) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(6);
  const auto dev = at::Device(at::kCUDA, 0);
  BitLinearOptions o(192, 80);
  o.quant.act.eps = 0.5;
  BitLinear fast(o), ref(o);
  {
    at::NoGradGuard g;
    ref->weight.copy_(fast->weight);
  }
  fast->to(dev);
  ASSERT_EQ(install_training_kernels(*fast), 1);
  const auto x = at::randn({6, 192}) * 0.01;  // amax far below eps
  ASSERT_TRUE(cuda_fast_path_applicable(*fast, x.to(dev)));
  const auto y = fast->forward(x.to(dev)).detach().cpu();
  const auto yr = ref->forward(x).detach();
  EXPECT_LT(rel_err(y, yr), 1e-5);
  // The default eps would give other codes: the check above is not vacuous.
  BitLinearOptions d(192, 80);
  BitLinear other(d);
  {
    at::NoGradGuard g;
    other->weight.copy_(ref->weight);
  }
  EXPECT_GT(rel_err(other->forward(x).detach(), yr), 1e-2);
}

TEST(FakeQuantGpu, FusedPassesEqualTheCpuRowKernelsBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  namespace k = bitqat::bitlinear::kernels;
  const auto dev = at::Device(at::kCUDA, 0);
  at::manual_seed(12);
  for (const int64_t cols : {1, 63, 64, 65, 300, 1000}) {
    auto x = at::randn({37, cols}) * 3.0;
    x[5].fill_(std::numeric_limits<float>::quiet_NaN());  // a non-finite row: NaN out, NaN scale
    x[6].zero_();
    for (const double lambda : {0.0, 0.5, 1.0}) {
      const auto [cpu_out, cpu_s] = k::act_fake_quant(x, 1e-5, 8, lambda);
      const auto [gpu_out, gpu_s] = k::act_fake_quant(x.to(dev), 1e-5, 8, lambda);
      EXPECT_TRUE(at::equal(cpu_s.isnan(), gpu_s.cpu().isnan()));
      EXPECT_TRUE(at::equal(cpu_s.nan_to_num(0), gpu_s.cpu().nan_to_num(0))) << cols << " " << lambda;
      EXPECT_TRUE(at::equal(cpu_out.nan_to_num(7), gpu_out.cpu().nan_to_num(7))) << cols << " " << lambda;
      const auto g = at::randn({37, cols});
      const auto xs = x.nan_to_num(0);
      const auto [o2, s2] = k::act_fake_quant(xs, 1e-5, 8, lambda);
      const auto dc = k::act_ste_backward(g, xs, s2, 8, 1.0, lambda);
      const auto dg = k::act_ste_backward(g.to(dev), xs.to(dev), s2.to(dev), 8, 1.0, lambda);
      EXPECT_TRUE(at::equal(dc, dg.cpu())) << cols << " " << lambda;
    }
    const auto w = at::randn({19, cols}) * 0.02;
    for (const auto& [group, per_tensor] :
         std::vector<std::pair<int64_t, bool>>{{64, false}, {cols, false}, {cols, true}}) {
      for (const double lambda : {0.25, 1.0}) {
        const auto [co, cg] = k::ternary_fake_quant(w, group, per_tensor, 1e-5, lambda);
        const auto [go, gg] = k::ternary_fake_quant(w.to(dev), group, per_tensor, 1e-5, lambda);
        EXPECT_TRUE(at::equal(cg, gg.cpu())) << cols << " " << group << " " << per_tensor;
        EXPECT_TRUE(at::equal(co, go.cpu())) << cols << " " << group << " " << per_tensor << " " << lambda;
      }
    }
  }
}

// ---- the same kernels on the CPU harness (cuda/sim/): the ops route CPU tensors to them ----------

using bitqat::testing::EmulatedKernels;

class W158A8Emulated : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

// The ops end to end on CPU tensors, through the kernels (their allocation, layouts and launches),
// against the same ops on the scalar references: activation codes,
// packed weights and scales bit for bit, int32 sums exactly, float32 outputs bit for bit except the
// GEMV's per-group sums (their own order of float additions: within 1e-5 relative), and every output
// written (poisoned first).
TEST_P(W158A8Emulated, KernelsThroughTheOpsEqualTheReferences) {
  const auto [m, n, k] = GetParam();
  at::manual_seed(static_cast<uint64_t>(m * 131 + n * 7 + k));
  const auto x = at::randn({m, k}) * 2;
  const auto w = at::randn({n, k});
  const auto bias = at::randn({n});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto qc = quantize_activations_int8(x);
  struct Kind {
    Granularity g;
    int64_t group;
  };
  const std::vector<Kind> kinds = {{Granularity::kPerTensor, 0},
                                   {Granularity::kPerChannel, 0},
                                   {Granularity::kPerGroup, 64},
                                   {Granularity::kPerGroup, 128},
                                   {Granularity::kPerGroup, 256}};
  std::vector<PackedTernary> refs;
  for (const Kind kind : kinds) refs.push_back(pack_ternary(w, kind.g, kind.group > 0 ? kind.group : 128));
  EmulatedKernels route;
  const auto qe = quantize_activations_int8(x);
  ASSERT_TRUE(qe.q.equal(qc.q));
  ASSERT_TRUE(qe.scales.equal(qc.scales));
  for (size_t i = 0; i < kinds.size(); ++i) {
    const auto& pc = refs[i];
    const std::string what = to_string(kinds[i].g) + " G " + std::to_string(kinds[i].group) + " M " +
                             std::to_string(m) + " N " + std::to_string(n) + " K " + std::to_string(k);
    const auto pe = pack_ternary(w, kinds[i].g, kinds[i].group > 0 ? kinds[i].group : 128);
    ASSERT_TRUE(pe.packed.equal(pc.packed)) << what;
    ASSERT_TRUE(pe.scales.equal(pc.scales)) << what;
    ASSERT_TRUE(pack_codes(unpack_codes(pc), pc.scales, kinds[i].g, kinds[i].group).packed.equal(pc.packed)) << what;
    set_cpu_launchers(nullptr);
    const auto yi_ref = w158a8_matmul_int32(qc, pc);
    const auto yf_ref = w158a8_matmul(qc, pc, bias, at::kFloat);
    set_cpu_launchers(&bitqat::cuda::emulated::launchers());
    if (kinds[i].g == Granularity::kPerTensor) {
      auto yi = at::full({m, n}, std::numeric_limits<int32_t>::min(), at::kInt);
      w158a8_matmul_int32(qe, pe, yi);
      EXPECT_TRUE(yi.equal(yi_ref)) << what;
    }
    auto yf = at::full({m, n}, nan);
    w158a8_matmul_out(qe, pe, bias, yf);
    EXPECT_TRUE(yf.isfinite().all().item<bool>()) << what << ": an unwritten or NaN output";
    if (kinds[i].g == Granularity::kPerGroup && bitqat::cuda::uses_gemv(m)) {
      EXPECT_LT(rel_err(yf, yf_ref), 1e-5) << what;
    } else {
      EXPECT_TRUE(yf.equal(yf_ref)) << what << ": worst " << rel_err(yf, yf_ref);
    }
    auto yb = at::full({m, n}, nan, at::kBFloat16);
    w158a8_matmul_out(qe, pe, bias, yb);
    EXPECT_LT(rel_err(yb, yf_ref), 1e-2) << what;
  }
}

// The kernels' own grid runs in tests/cuda/ (cuda_sim_tests); here the ops around them: both kernels,
// N below and above a GEMM tile, K with and without a padded 64-weight chunk.
INSTANTIATE_TEST_SUITE_P(Shapes, W158A8Emulated,
                         ::testing::Combine(::testing::Values(1, 17, 100), ::testing::Values(8, 65),
                                            ::testing::Values(100, 130, 256)));

// Layouts the ops must handle before a launch: a strided (transposed) input, bf16 input with a
// double norm weight, a transposed weight, a strided bias; and what the kernels need that the
// references do not: 16-byte-aligned codes and packed words.
TEST(W158A8EmulatedOps, StridesDtypesAndAlignment) {
  at::manual_seed(21);
  const auto xt = at::randn({130, 9}).t();  // [9, 130], not contiguous
  const auto nw = at::rand({130}, at::kDouble) + 0.5;
  const auto wt = at::randn({130, 40}).t();  // [40, 130], not contiguous
  const auto bias = at::randn({80}).slice(0, 0, 80, 2);
  const auto qc = quantize_activations_int8(xt.to(at::kBFloat16), nw);
  const auto pc = pack_ternary(wt, Granularity::kPerChannel);
  const auto yc = w158a8_matmul(qc, pc, bias, at::kFloat);
  {
    EmulatedKernels route;
    const auto qe = quantize_activations_int8(xt.to(at::kBFloat16), nw);
    EXPECT_TRUE(qe.q.equal(qc.q));
    EXPECT_TRUE(qe.scales.equal(qc.scales));
    const auto pe = pack_ternary(wt, Granularity::kPerChannel);
    EXPECT_TRUE(pe.packed.equal(pc.packed));
    EXPECT_TRUE(w158a8_matmul(qe, pe, bias, at::kFloat).equal(yc));
    // Codes one byte off a 16-byte boundary: refused before any launch.
    auto bad = qe;
    bad.q = at::empty({qe.q.numel() + 16}, at::kChar).narrow(0, 1, qe.q.numel()).view(qe.q.sizes());
    bad.q.copy_(qe.q);
    expect_error([&] { w158a8_matmul(bad, pe, bias, at::kFloat); }, "must start 16-byte aligned");
  }
  // The references take any address.
  auto off = qc;
  off.q = at::empty({qc.q.numel() + 16}, at::kChar).narrow(0, 1, qc.q.numel()).view(qc.q.sizes());
  off.q.copy_(qc.q);
  EXPECT_TRUE(w158a8_matmul(off, pc, bias, at::kFloat).equal(yc));
}

TEST(W158A8EmulatedOps, EveryOperandIsCheckedWithAClearError) {
  EmulatedKernels route;
  every_operand_is_checked();
}

// A NaN or infinity in a token gives that token a non-finite output row through the kernels too.
TEST(W158A8EmulatedOps, ANonFiniteTokenGivesANonFiniteOutputRow) {
  at::manual_seed(13);
  EmulatedKernels route;
  auto x = at::randn({20, 200});
  x[2][7] = std::numeric_limits<float>::quiet_NaN();
  x[5][199] = std::numeric_limits<float>::infinity();
  x[17][0] = -std::numeric_limits<float>::infinity();
  for (const int64_t m : {int64_t{6}, int64_t{20}}) {  // the GEMV and the GEMM
    const auto y = w158a8_matmul(quantize_activations_int8(x.narrow(0, 0, m), at::rand({200}) + 0.5),
                                 pack_ternary(at::randn({70, 200}), Granularity::kPerGroup, 64), {}, at::kFloat);
    for (int64_t i = 0; i < m; ++i) {
      const bool bad = i == 2 || i == 5 || i == 17;
      EXPECT_EQ(y[i].isfinite().any().item<bool>(), !bad) << "M " << m << " row " << i;
    }
  }
}

// Every kernel plan through the ops on the emulated kernels (set_plan_override): the workspaces the
// ops allocate, cuBLAS's int8 expansion made once and kept with the weights, and the one-token layer
// call with the quantization fused into the GEMV; per channel, so every plan's output equals the
// reference route's bit for bit.
TEST(W158A8EmulatedOps, EveryPlanThroughTheOpsEqualsTheReferences) {
  at::manual_seed(22);
  const auto w = pack_ternary(at::randn({40, 300}), Granularity::kPerChannel);
  const auto nw = at::rand({300}) + 0.5;
  const auto bias = at::randn({40});
  for (const int64_t m : {int64_t{1}, int64_t{5}, int64_t{20}}) {
    const auto x = at::randn({m, 300});
    const auto want = w158a8_linear(x, nw, 1e-6, 1e-5, w, bias, at::kFloat);  // the references
    EmulatedKernels route;
    for (int kk = 0; kk < bitqat::cuda::kKernelCount; ++kk) {
      for (const int splits : {1, 3}) {
        const bitqat::cuda::Plan plan{static_cast<bitqat::cuda::Kernel>(kk), splits};
        if (*bitqat::cuda::plan_refusal(plan, m, 300, w.kind)) continue;
        set_plan_override(&plan);
        EXPECT_EQ(plan_for(at::kCPU, m, w).kernel, plan.kernel);
        auto wc = w;
        wc.expanded = at::Tensor();
        const auto y = w158a8_linear(x, nw, 1e-6, 1e-5, wc, bias, at::kFloat);
        EXPECT_TRUE(y.equal(want)) << bitqat::cuda::kernel_name(plan.kernel) << " x " << splits << " M " << m;
        if (plan.kernel == bitqat::cuda::Kernel::kCublasInt8) {
          ASSERT_TRUE(wc.expanded.defined());
          const void* first = wc.expanded.data_ptr();
          w158a8_linear(x, nw, 1e-6, 1e-5, wc, bias, at::kFloat);
          EXPECT_EQ(wc.expanded.data_ptr(), first) << "the expansion was made again";
        }
        set_plan_override(nullptr);
      }
    }
    // Without an override: the harness has no measured table, so today's kernels.
    EXPECT_EQ(plan_for(at::kCPU, m, w).kernel,
              m <= 16 ? bitqat::cuda::Kernel::kGemvColumn : bitqat::cuda::Kernel::kMma);
  }
}

// Every kernel plan on the GPU (set_plan_override), through the layer op, against the CPU references:
// per channel bit for bit (the kernels are built without FMA contraction), per group of 64 within
// 1e-5 relative. Runs under compute-sanitizer memcheck in launch/gpu_check.sh.
TEST(W158A8GpuPlans, EveryPlanEqualsTheReferences) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto dev = at::Device(at::kCUDA, 0);
  at::manual_seed(23);
  const auto nw = at::rand({300}) + 0.5;
  const auto bias = at::randn({70});
  for (const auto g : {Granularity::kPerChannel, Granularity::kPerGroup}) {
    const auto wc = pack_ternary(at::randn({70, 300}), g, 64);
    auto wg = wc;
    wg.packed = wc.packed.to(dev);
    wg.scales = wc.scales.to(dev);
    for (const int64_t m : {int64_t{1}, int64_t{5}, int64_t{20}, int64_t{100}}) {
      const auto x = at::randn({m, 300});
      const auto want = w158a8_linear(x, nw, 1e-6, 1e-5, wc, bias, at::kFloat);
      for (int kk = 0; kk < bitqat::cuda::kKernelCount; ++kk) {
        for (const int splits : {1, 3}) {
          const bitqat::cuda::Plan plan{static_cast<bitqat::cuda::Kernel>(kk), splits};
          if (*bitqat::cuda::plan_refusal(plan, m, 300, wg.kind)) continue;
          set_plan_override(&plan);
          auto w = wg;
          w.expanded = at::Tensor();
          const auto y = w158a8_linear(x.to(dev), nw.to(dev), 1e-6, 1e-5, w, bias.to(dev), at::kFloat).cpu();
          set_plan_override(nullptr);
          const std::string what = std::string(bitqat::cuda::kernel_name(plan.kernel)) + " x " +
                                   std::to_string(splits) + " M " + std::to_string(m) + " " + to_string(g);
          if (g == Granularity::kPerChannel) {
            EXPECT_TRUE(y.equal(want)) << what << ": worst " << rel_err(y, want);
          } else {
            EXPECT_LT(rel_err(y, want), 1e-5) << what;
          }
        }
      }
    }
  }
}
