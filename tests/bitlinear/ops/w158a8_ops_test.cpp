// The W1.58A8 ops against the references: CPU paths here, GPU kernels over a grid of shapes when a
// GPU is present (integer results exactly equal; float epilogues within 1e-5 relative).
#include "bitlinear/ops/w158a8_ops.hpp"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <limits>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "bitlinear/quant_kernels.hpp"
#include "bitlinear/quantized_linear.hpp"

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

class W158A8Gpu : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(W158A8Gpu, KernelsEqualTheReferences) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto [m, n, k] = GetParam();
  at::manual_seed(static_cast<uint64_t>(m * 131 + n * 7 + k));
  const auto x = at::randn({m, k}) * 2;
  const auto w = at::randn({n, k});
  const auto bias = at::randn({n});
  const auto dev = at::Device(at::kCUDA, 0);

  const auto qc = quantize_activations_int8(x);
  const auto qg = quantize_activations_int8(x.to(dev));
  EXPECT_TRUE(qg.q.cpu().equal(qc.q));
  EXPECT_TRUE(qg.scales.cpu().equal(qc.scales));
  for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
    const auto pc = pack_ternary(w, g, 64);
    // Integer accumulators: exactly equal, on the same packed weights.
    PackedTernary pg = pc;
    pg.packed = pc.packed.to(dev);
    pg.scales = pc.scales.to(dev);
    if (g == Granularity::kPerTensor) {
      const auto yi = w158a8_matmul_int32(qg, pg).cpu();
      const auto yr = w158a8_matmul_int32(qc, pc);
      EXPECT_TRUE(yi.equal(yr)) << "M " << m << " N " << n << " K " << k << " worst "
                                << (yi - yr).abs().max().item<int>();
    }
    const auto yf = w158a8_matmul(qg, pg, bias.to(dev), at::kFloat).cpu();
    const auto yr = w158a8_matmul(qc, pc, bias, at::kFloat);
    const float err = rel_err(yf, yr);
    std::printf("M %lld N %lld K %lld %s: worst relative error %.3g\n", static_cast<long long>(m),
                static_cast<long long>(n), static_cast<long long>(k), to_string(g).c_str(), err);
    EXPECT_LT(err, 1e-5);
    EXPECT_LT(rel_err(w158a8_matmul(qg, pg, bias.to(dev), at::kBFloat16).cpu(), yr), 1e-2);
    // GPU quantize-and-pack: the same canonical sums, so the same codes and bit-identical scales.
    const auto pk = pack_ternary(w.to(dev), g, 64);
    EXPECT_TRUE(unpack_codes(pk).cpu().equal(unpack_codes(pc))) << to_string(g);
    EXPECT_TRUE(pk.scales.cpu().equal(pc.scales)) << to_string(g);
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
                                            ::testing::Values(32, 100, 256, 300)));

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
    for (const auto& [group, per_tensor] : std::vector<std::pair<int64_t, bool>>{{64, false}, {cols, false}, {cols, true}}) {
      for (const double lambda : {0.25, 1.0}) {
        const auto [co, cg] = k::ternary_fake_quant(w, group, per_tensor, 1e-5, lambda);
        const auto [go, gg] = k::ternary_fake_quant(w.to(dev), group, per_tensor, 1e-5, lambda);
        EXPECT_TRUE(at::equal(cg, gg.cpu())) << cols << " " << group << " " << per_tensor;
        EXPECT_TRUE(at::equal(co, go.cpu())) << cols << " " << group << " " << per_tensor << " " << lambda;
      }
    }
  }
}
