// The device kernels of bitlinear's quantizers (bitlinear/ops/quant_ops.hpp), run on CPU tensors
// through the CPU harness (set_cpu_launchers): registered by linking the op layer, the same values
// bit for bit as bitlinear's CPU loops (codes, scales, norms, fake quantization and its gradient),
// and the same operand checks, with the same messages, on both routes.
#include "bitlinear/ops/quant_ops.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "bitlinear/estimators.hpp"
#include "bitlinear/ops/route.hpp"
#include "bitlinear/quantizers.hpp"
#include "tests/emulated_kernels.hpp"
#include "tests/user_error.hpp"

namespace k = bitqat::bitlinear::kernels;

namespace {

using bitqat::testing::EmulatedKernels;

// Runs f on the CPU loops and on the emulated kernels: both results.
template <class F>
auto both(F&& f) {
  auto cpu = f();
  EmulatedKernels route;
  return std::make_pair(cpu, f());
}

// Bit-equal, NaN where the other has NaN.
bool same(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && at::equal(a.isnan(), b.isnan()) &&
         at::equal(a.nan_to_num(0), b.nan_to_num(0));
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  const auto what = bitqat::testing::error_of<c10::Error>(f);
  EXPECT_NE(what.find(needle), std::string::npos) << (what.empty() ? "no error" : what) << "; expected " << needle;
}

at::Tensor rows_with_specials(int64_t m, int64_t k, uint64_t seed) {
  at::manual_seed(seed);
  auto x = at::randn({m, k}) * 3.0;
  x[1].fill_(std::numeric_limits<float>::quiet_NaN());  // a non-finite row: codes 0, scale NaN
  x[2].zero_();                                         // all zero: codes 0, finite scale
  x[3][0] = 127.0f;                                     // ties: scale 1, values k + 0.5
  for (int64_t j = 1; j < k; ++j) x[3][j] = static_cast<float>(j % 9) - 4.5f;
  return x;
}

}  // namespace

TEST(QuantOps, LinkingTheOpLayerRegistersItsDeviceKernels) {
  EXPECT_EQ(k::device_kernels(), &bitqat::bitlinear::ops::device_quant_kernels());
  const auto& d = bitqat::bitlinear::ops::device_quant_kernels();
  const auto f = at::zeros({2, 2});
  EXPECT_FALSE(d.serves(f));  // CPU tensors only when routed to the harness
  EmulatedKernels route;
  EXPECT_TRUE(d.serves(f));
  EXPECT_TRUE(d.serves(f.to(at::kBFloat16)));
  EXPECT_FALSE(d.serves(f.to(at::kDouble)));  // double keeps the CPU's double loops
}

TEST(QuantOps, ActivationCodesAndNormsEqualTheCpuBitForBit) {
  for (const int64_t kk : {1, 63, 257}) {
    const auto x = rows_with_specials(6, std::max<int64_t>(kk, 4), static_cast<uint64_t>(kk));
    const auto nw = at::rand({x.size(1)}, at::kDouble) + 0.5;  // converted to float32 by both routes
    for (const bool norm : {false, true}) {
      for (const auto dt : {at::kFloat, at::kBFloat16}) {
        const auto xi = dt == at::kFloat ? x : x.to(dt);
        const auto [c, e] =
            both([&] { return k::quantize_rows(xi, 1e-5, 8, xi.size(1) + 5, norm ? nw : at::Tensor()); });
        EXPECT_TRUE(same(c.codes, e.codes)) << kk << " norm " << norm << " " << dt;
        EXPECT_TRUE(same(c.scales, e.scales)) << kk << " norm " << norm << " " << dt;
      }
    }
    const auto [c4, e4] = both([&] { return k::quantize_rows(x, 1e-5, 4); });
    EXPECT_TRUE(same(c4.codes, e4.codes) && same(c4.scales, e4.scales)) << kk;
    const auto [ct, et] = both([&] { return k::quantize_tensor(x.nan_to_num(0).t(), 1e-5, 8); });
    EXPECT_TRUE(same(ct.codes, et.codes) && same(ct.scales, et.scales)) << kk;
    const auto [cn, en] = both([&] { return k::rms_norm(x, nw, 1e-6); });
    EXPECT_TRUE(same(cn.first, en.first) && same(cn.second, en.second)) << kk;
    const auto [cu, eu] = both([&] { return k::rms_norm(x, at::Tensor(), 1e-6); });
    EXPECT_TRUE(same(cu.first, eu.first) && same(cu.second, eu.second)) << kk;
  }
}

TEST(QuantOps, WeightCodesAndScalesEqualTheCpuBitForBit) {
  at::manual_seed(5);
  for (const int64_t cols : {1, 64, 300}) {
    const auto w = at::randn({7, cols}) * 0.02;
    for (const bool binary : {false, true}) {
      for (const auto& [group, per_tensor] :
           std::vector<std::pair<int64_t, bool>>{{64, false}, {cols, false}, {7, false}, {0, true}}) {
        const auto [c, e] = both([&] { return k::weight_codes(w, group, per_tensor, binary, 1e-5); });
        const std::string what = std::to_string(cols) + " " + std::to_string(group) + (binary ? " binary" : "");
        EXPECT_TRUE(same(c.codes, e.codes)) << what;
        EXPECT_TRUE(same(c.gamma, e.gamma)) << what;
        EXPECT_TRUE(same(c.mean, e.mean)) << what;
      }
    }
  }
}

TEST(QuantOps, FakeQuantizationAndItsGradientEqualTheCpuBitForBit) {
  for (const int64_t cols : {1, 65, 300}) {
    const auto x = rows_with_specials(9, std::max<int64_t>(cols, 4), static_cast<uint64_t>(cols) + 1);
    at::manual_seed(static_cast<uint64_t>(cols));
    const auto g = at::randn(x.sizes());
    for (const double lambda : {0.0, 0.5, 1.0}) {
      const auto [c, e] = both([&] { return k::act_fake_quant(x, 1e-5, 8, lambda); });
      EXPECT_TRUE(same(c.first, e.first) && same(c.second, e.second)) << cols << " " << lambda;
      const auto xs = x.nan_to_num(0);
      const auto s = k::act_fake_quant(xs, 1e-5, 8, lambda).second;
      for (const double clip : {-1.0, 0.5}) {
        const auto [dc, de] = both([&] { return k::act_ste_backward(g.t().contiguous().t(), xs, s, 8, clip, lambda); });
        EXPECT_TRUE(same(dc, de)) << cols << " " << lambda << " clip " << clip;
      }
    }
    const auto w = at::randn({5, cols}) * 0.02;
    for (const auto& [group, per_tensor] :
         std::vector<std::pair<int64_t, bool>>{{64, false}, {cols, false}, {0, true}}) {
      for (const double lambda : {0.25, 1.0}) {
        const auto [c, e] = both([&] { return k::ternary_fake_quant(w, group, per_tensor, 1e-5, lambda); });
        EXPECT_TRUE(same(c.first, e.first) && same(c.second, e.second)) << cols << " " << group << " " << lambda;
      }
    }
  }
}

// The estimators end to end on the emulated kernels: a clipped STE's forward and gradient as on the
// CPU loops.
TEST(QuantOps, TheEstimatorsOnTheKernelsEqualTheCpu) {
  using namespace bitqat::bitlinear;
  at::manual_seed(8);
  const auto x0 = at::randn({2, 3, 40});
  const auto up = at::randn({2, 3, 40});
  ActQuantSpec as;
  as.estimator = Estimator::kClipped;
  as.clip = 0.7;
  auto run = [&] {
    const auto x = x0.clone().requires_grad_();
    const auto y = fake_quantize_activation(x, as, 0.6);
    (y * up).sum().backward();
    return std::make_pair(y.detach(), x.grad());
  };
  const auto [c, e] = both(run);
  EXPECT_TRUE(same(c.first, e.first));
  EXPECT_TRUE(same(c.second, e.second));
  const auto w0 = at::randn({6, 70});
  auto run_w = [&] { return fake_quantize_weight(w0, WeightQuantSpec{}, 0.3); };
  const auto [cw, ew] = both(run_w);
  EXPECT_TRUE(same(cw, ew));
}

// Every operand check, with its message, on the CPU loops and through the kernels: the entry points
// check before they choose a route, so the errors are the same.
TEST(QuantOps, EveryOperandIsCheckedWithTheSameErrorOnBothRoutes) {
  const auto x = at::randn({3, 5});
  const auto s = at::ones({3});
  const auto meta = at::empty({3}, at::TensorOptions().device(at::kMeta));
  const std::vector<std::pair<std::function<void()>, std::string>> cases = {
      {[&] { k::quantize_rows(x.reshape({15}), 1e-5, 8); },
       "quantize_rows: x must be a contiguous 2-D tensor, got shape [15]"},
      {[&] {
         k::quantize_rows(at::randn({5, 3}).t(), 1e-5, 8);
       },
       "quantize_rows: x must be a contiguous 2-D tensor, got shape [3, 5] (not contiguous)"},
      {[&] { k::quantize_rows(x.to(at::kInt), 1e-5, 8); },
       "quantize_rows: x must be a floating-point tensor, got int32"},
      {[&] { k::quantize_rows(x, 1e-5, 9); }, "quantize_rows: activation bits must be in [2, 8], got 9"},
      {[&] { k::quantize_rows(x, 1e-5, 8, 4); }, "quantize_rows: ldq = 4 is below K = 5"},
      {[&] { k::quantize_rows(x, 1e-5, 8, -1, at::ones({4})); },
       "quantize_rows: norm_weight has 4 entries, expected 5"},
      {[&] { k::quantize_rows(at::Tensor(), 1e-5, 8); }, "quantize_rows: x is an undefined tensor"},
      {[&] {
         k::quantize_rows(at::empty({3, 5}, at::TensorOptions().device(at::kMeta)), 1e-5, 8);
       },
       "quantize_rows: expected a CPU or CUDA tensor, got one on meta"},
      {[&] { k::quantize_tensor(x.to(at::kLong), 1e-5, 8); },
       "quantize_tensor: x must be a floating-point tensor, got int64"},
      {[&] { k::quantize_tensor(x, 1e-5, 1); }, "quantize_tensor: activation bits must be in [2, 8], got 1"},
      {[&] { k::rms_norm(x, at::ones({3}), 1e-6); }, "rms_norm: weight has 3 entries, expected 5"},
      {[&] {
         k::rms_norm(x.reshape({1, 3, 5}), at::Tensor(), 1e-6);
       },
       "rms_norm: x must be a contiguous 2-D tensor, got shape [1, 3, 5]"},
      {[&] { k::weight_codes(x, 0, false, false, 1e-5); }, "weight_codes: group size must be >= 1, got 0"},
      {[&] {
         k::weight_codes(at::empty({0, 5}), 2, false, false, 1e-5);
       },
       "weight_codes: the weight [0, 5] is empty"},
      {[&] { k::act_fake_quant(x.to(at::kDouble), 1e-5, 8, 1.0); }, "act_fake_quant: x must be float32, got float64"},
      {[&] { k::act_fake_quant(x, 1e-5, 0, 1.0); }, "act_fake_quant: activation bits must be in [2, 8], got 0"},
      {[&] { k::act_ste_backward(x, x, at::ones({2}), 8, 1.0, 1.0); },
       "act_ste_backward: scales has 2 entries, expected 3"},
      {[&] { k::act_ste_backward(x, x, s.to(at::kDouble), 8, 1.0, 1.0); },
       "act_ste_backward: scales must be float32, got float64"},
      {[&] {
         k::act_ste_backward(x, x, at::ones({3, 2}).select(1, 0), 8, 1.0, 1.0);
       },
       "act_ste_backward: scales must be contiguous, got strides [2]"},
      {[&] { k::act_ste_backward(x.narrow(1, 0, 4), x, s, 8, 1.0, 1.0); },
       "act_ste_backward: g is [3, 4], x is [3, 5]"},
      {[&] { k::act_ste_backward(x, x.t().contiguous().t(), s, 8, 1.0, 1.0); },
       "act_ste_backward: x must be a contiguous 2-D tensor, got shape [3, 5] (not contiguous)"},
      {[&] { k::act_ste_backward(x.to(at::kBFloat16), x, s, 8, 1.0, 1.0); },
       "act_ste_backward: g must be float32, got bfloat16"},
      {[&] { k::act_ste_backward(x, x, meta, 8, 1.0, 1.0); },
       "act_ste_backward: scales is on meta, the other operands on cpu"},
      {[&] { k::act_ste_backward(x, x, s, 9, 1.0, 1.0); },
       "act_ste_backward: activation bits must be in [2, 8], got 9"},
      {[&] { k::ternary_fake_quant(x, -1, false, 1e-5, 1.0); }, "ternary_fake_quant: group size must be >= 1, got -1"},
      {[&] { k::ternary_fake_quant(x.to(at::kDouble), 2, false, 1e-5, 1.0); },
       "ternary_fake_quant: w must be float32, got float64"},
      {[&] {
         k::ternary_fake_quant(at::empty({3, 0}), 2, false, 1e-5, 1.0);
       },
       "ternary_fake_quant: the weight [3, 0] is empty"},
  };
  for (const auto& [call, message] : cases) expect_error(call, message);
  EmulatedKernels route;
  SCOPED_TRACE("emulated kernels");
  for (const auto& [call, message] : cases) expect_error(call, message);
}
