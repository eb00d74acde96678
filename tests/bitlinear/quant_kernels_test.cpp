// The tensor-level code kernels (bitlinear/quant_kernels.hpp): equal to an independent scalar
// computation, independent of the thread count, and bit-identical under every LibTorch CPU
// capability (the test binary runs itself with ATEN_CPU_CAPABILITY=default, avx2 and avx512).
#include "bitlinear/quant_kernels.hpp"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "../training/spawn.hpp"
#include "bitlinear/quantized_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "bitlinear/rms_norm.hpp"
#include "tests/user_error.hpp"

using namespace bitqat::bitlinear;
namespace fs = std::filesystem;

namespace {

// Deterministic floats that do not come from ATen's random generators (whose vectorized samplers are
// themselves instruction-set dependent): splitmix64 of the index, scaled to [-scale, scale).
at::Tensor hashed(std::vector<int64_t> shape, uint64_t seed, double scale) {
  auto t = at::empty(shape, at::kFloat);
  auto* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    p[i] = static_cast<float>((static_cast<double>(x >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale);
  }
  return t;
}

// Rows whose maximum is 127 (scale exactly 1) and whose other entries are k + 0.5: every code is a tie.
at::Tensor ties(int64_t m, int64_t k) {
  auto t = at::empty({m, k});
  auto* p = t.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < k; ++j) p[i * k + j] = j == 0 ? 127.0f : static_cast<float>((i + j) % 200 - 100) + 0.5f;
  }
  return t;
}

// Independent scalar computation of per-token codes: long double sums are not needed here (absmax is
// exact); the scale and code are one float division and one rounding of a float product.
std::pair<std::vector<int8_t>, std::vector<float>> naive_act(const at::Tensor& x) {
  const int64_t m = x.size(0), k = x.size(1);
  const auto* p = x.data_ptr<float>();
  std::vector<int8_t> c(static_cast<size_t>(m * k));
  std::vector<float> s(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    float amax = 0;
    for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(p[i * k + j]));
    s[static_cast<size_t>(i)] = 127.0f / std::max(amax, 1e-5f);
    for (int64_t j = 0; j < k; ++j) {
      const float v = std::round(p[i * k + j] * s[static_cast<size_t>(i)]);
      c[static_cast<size_t>(i * k + j)] = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, v)));
    }
  }
  return {c, s};
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  const auto what = bitqat::testing::error_of<c10::Error>(f);
  EXPECT_NE(what.find(needle), std::string::npos) << (what.empty() ? "no error" : what) << "; expected " << needle;
}

std::string bytes_of(const at::Tensor& t) {
  const auto c = t.contiguous().cpu();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
}

// Everything the code kernels produce for a fixed input, as one byte string.
std::string digest() {
  std::string out;
  const auto x = hashed({37, 300}, 1, 3.0);
  const auto w = hashed({300}, 2, 1.5);
  const auto [y, r] = kernels::rms_norm(x, w, 1e-6);
  out += bytes_of(y) + bytes_of(r);
  const auto q = kernels::quantize_rows(x, 1e-5, 8, 384, w, 1e-6);
  out += bytes_of(q.codes) + bytes_of(q.scales);
  const auto t = ties(5, 129);
  const auto qt = kernels::quantize_rows(t, 1e-5, 8);
  out += bytes_of(qt.codes) + bytes_of(qt.scales);
  const auto qx = kernels::quantize_tensor(x, 1e-5, 4);
  out += bytes_of(qx.codes) + bytes_of(qx.scales);
  const auto wt = hashed({96, 1000}, 3, 0.05);
  for (bool binary : {false, true}) {
    for (int64_t group : {int64_t{64}, int64_t{1000}, int64_t{333}}) {
      const auto c = kernels::weight_codes(wt, group, false, binary, 1e-5);
      out += bytes_of(c.codes) + bytes_of(c.gamma) + (binary ? bytes_of(c.mean) : "");
    }
    const auto c = kernels::weight_codes(wt, 0, true, binary, 1e-5);
    out += bytes_of(c.codes) + bytes_of(c.gamma);
  }
  // The exact quantized linear: integer sums and IEEE epilogue, so even its outputs are fixed.
  WeightQuantSpec ws;
  ws.granularity = Granularity::kPerGroup;
  ws.group_size = 100;
  const auto lin = quantized_linear(hashed({9, 1000}, 4, 2.0), wt, hashed({96}, 5, 0.1), ws, ActQuantSpec{});
  out += bytes_of(lin);
  return out;
}

}  // namespace

TEST(QuantKernels, ActivationCodesEqualAnIndependentScalarComputation) {
  for (const auto& x : {hashed({13, 257}, 7, 5.0), ties(4, 64)}) {
    const auto got = kernels::quantize_rows(x, 1e-5, 8);
    const auto [codes, scales] = naive_act(x);
    ASSERT_EQ(got.codes.numel(), static_cast<int64_t>(codes.size()));
    EXPECT_EQ(std::memcmp(got.codes.data_ptr<int8_t>(), codes.data(), codes.size()), 0);
    EXPECT_EQ(std::memcmp(got.scales.data_ptr<float>(), scales.data(), scales.size() * 4), 0);
  }
  // Ties go away from zero: row 0 is 127, -98.5, -97.5, -96.5 with scale 1.
  const auto t = kernels::quantize_rows(ties(1, 4), 1e-5, 8);
  EXPECT_EQ(t.scales[0].item<float>(), 1.0f);
  EXPECT_EQ(t.codes[0][0].item<int>(), 127);
  EXPECT_EQ(t.codes[0][1].item<int>(), -99);
  EXPECT_EQ(t.codes[0][2].item<int>(), -98);
  EXPECT_EQ(t.codes[0][3].item<int>(), -97);
}

TEST(QuantKernels, WeightScalesAreTheCorrectlyRoundedMeans) {
  const auto w = hashed({8, 700}, 11, 0.3);
  const auto c = kernels::weight_codes(w, 128, false, false, 1e-5);
  const auto* p = w.data_ptr<float>();
  for (int64_t r = 0; r < 8; ++r) {
    for (int64_t g = 0; g < 6; ++g) {
      long double s = 0;
      const int64_t lo = g * 128, hi = std::min<int64_t>(700, lo + 128);
      for (int64_t j = lo; j < hi; ++j) s += std::fabs(p[r * 700 + j]);
      const float want = static_cast<float>(static_cast<double>(s / static_cast<long double>(hi - lo)));
      EXPECT_EQ(c.gamma[r][g].item<float>(), want) << r << "," << g;
      for (int64_t j = lo; j < hi; ++j) {
        const float v = std::round(p[r * 700 + j] / (want + 1e-5f));
        EXPECT_EQ(c.codes[r][j].item<int>(), static_cast<int>(std::min(1.0f, std::max(-1.0f, v))));
      }
    }
  }
}

// The passes without device kernels read everything on the CPU, in place: each operand is checked
// with a message naming it and the value found (the passes with device kernels: bitlinear/ops tests,
// on both routes). Without the op layer (this binary does not link it) no device kernels are
// registered.
TEST(QuantKernels, TheCpuPassesCheckEveryOperand) {
  EXPECT_EQ(kernels::device_kernels(), nullptr);
  const auto codes = at::zeros({3, 5}, at::kChar);
  const auto s = at::ones({3});
  const auto meta = at::empty({3}, at::TensorOptions().device(at::kMeta));
  expect_error([&] { kernels::dequant_rows(codes.to(at::kInt), s); }, "dequant_rows: codes must be int8, got int32");
  expect_error([&] { kernels::dequant_rows(codes, at::ones({4})); }, "dequant_rows: scales has 4 entries, expected 3");
  expect_error([&] { kernels::dequant_rows(codes, meta); }, "dequant_rows: scales must be on the CPU");
  expect_error([&] { kernels::dequant_rows(codes, s.to(at::kDouble)); },
               "dequant_rows: scales must be float32, got float64");
  const auto acc = at::zeros({3, 4}, at::kInt);
  expect_error([&] { kernels::linear_epilogue({}, at::ones({4}), 1, s, {}); }, "linear_epilogue: no integer sums");
  expect_error(
      [&] {
        kernels::linear_epilogue({acc, acc.narrow(1, 0, 3)}, at::ones({8}), 2, s, {});
      },
      "linear_epilogue: the sums of the groups differ in shape: [3, 3] and [3, 4]");
  expect_error(
      [&] {
        kernels::linear_epilogue({acc, acc}, at::ones({4}), 1, s, {});
      },
      "linear_epilogue: gstride = 1 is below the 2 groups");
  expect_error([&] { kernels::linear_epilogue({acc}, at::ones({3}), 1, s, {}); },
               "linear_epilogue: gamma has 3 entries, expected 4");
  expect_error([&] { kernels::linear_epilogue({acc}, at::ones({4}), 1, s, at::ones({5})); },
               "linear_epilogue: bias has 5 entries, expected 4");
  expect_error([&] { kernels::linear_epilogue({acc.to(at::kFloat)}, at::ones({4}), 1, s, {}); },
               "linear_epilogue: acc must be int32, got float32");
  const auto x = at::randn({3, 5});
  expect_error([&] { kernels::norm_quantize_rows(x.to(at::kDouble), 1e-5, 8, false, {}, 1e-6); },
               "norm_quantize_rows: x must be float32, got float64");
  expect_error([&] { kernels::norm_quantize_rows(x, 1e-5, 8, true, at::ones({4}), 1e-6); },
               "norm_quantize_rows: norm_weight has 4 entries, expected 5");
  expect_error([&] { kernels::norm_quantize_rows(x, 1e-5, 10, false, {}, 1e-6); },
               "norm_quantize_rows: activation bits must be in [2, 8], got 10");
  const auto r = at::ones({3});
  expect_error([&] { kernels::rms_norm_backward(x, x, at::ones({5}), at::ones({2})); },
               "rms_norm_backward: r has 2 entries, expected 3");
  expect_error([&] { kernels::rms_norm_backward(x.narrow(0, 0, 2), x, at::ones({5}), r); },
               "rms_norm_backward: g is [2, 5], x is [3, 5]");
  expect_error([&] { kernels::rms_norm_backward(x, x, at::ones({4}), r); },
               "rms_norm_backward: w has 4 entries, expected 5");
  expect_error([&] { kernels::rms_norm_backward(x, x.to(at::kDouble), at::ones({5}), r); },
               "rms_norm_backward: x must be float32, got float64");
  expect_error([&] { kernels::rms_norm_backward(x, x, at::ones({5}), r.to(at::kDouble)); },
               "rms_norm_backward: r must be float32, got float64");
  expect_error([&] { kernels::rms_norm_backward(x, x, at::ones({5}), meta); },
               "rms_norm_backward: r must be on the CPU");
  expect_error([&] { kernels::scale_codes(codes, at::ones({2}), 2, false); },
               "scale_codes: gamma has 2 entries, expected 9");
  expect_error([&] { kernels::scale_codes(codes, at::ones({1}), 0, false); },
               "scale_codes: group size must be >= 1, got 0");
  expect_error([&] { kernels::scale_codes(codes.to(at::kFloat), at::ones({1}), 0, true); },
               "scale_codes: codes must be int8, got float32");
  expect_error([&] { kernels::scale_codes(codes, meta.narrow(0, 0, 1), 0, true); },
               "scale_codes: gamma is on meta, the other operands on cpu");
  // Strided operands that are read through a copy are accepted, and give the contiguous result.
  const auto g = at::randn({5, 3}).t();
  const auto [dx, dw] =
      kernels::rms_norm_backward(g, x, at::ones({5}), kernels::rms_norm(x, at::ones({5}), 1e-6).second);
  const auto [dx2, dw2] =
      kernels::rms_norm_backward(g.contiguous(), x, at::ones({5}), kernels::rms_norm(x, at::ones({5}), 1e-6).second);
  EXPECT_TRUE(dx.equal(dx2) && dw.equal(dw2));
}

TEST(QuantKernels, ResultsDoNotDependOnTheThreadCount) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = digest();
  at::set_num_threads(2);
  const auto two = digest();
  at::set_num_threads(threads);
  EXPECT_TRUE(one == two);
}

// Started by the test below with ATEN_CPU_CAPABILITY set; writes the digest to BITQAT_QK_OUT.
TEST(QuantKernelsWorker, WriteDigest) {
  const char* out = std::getenv("BITQAT_QK_OUT");
  if (!out) GTEST_SKIP() << "a child of QuantKernels.BitIdenticalUnderEveryCpuCapability";
  std::ofstream(out, std::ios::binary) << digest();
}

TEST(QuantKernels, BitIdenticalUnderEveryCpuCapability) {
  const auto dir = fs::temp_directory_path() / ("bitqat_qk_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> digests;
  for (const char* cap : {"default", "avx2", "avx512"}) {
    const auto file = (dir / cap).string();
    const auto pid = bitqat::testing::spawn({self, "--gtest_filter=QuantKernelsWorker.WriteDigest"},
                                            {{"ATEN_CPU_CAPABILITY", cap}, {"BITQAT_QK_OUT", file}},
                                            (dir / (std::string(cap) + ".log")).string());
    ASSERT_EQ(bitqat::testing::wait_for(pid, 120), 0)
        << bitqat::testing::slurp((dir / (std::string(cap) + ".log")).string());
    digests.push_back(bitqat::testing::slurp(file));
    ASSERT_FALSE(digests.back().empty()) << cap;
  }
  EXPECT_TRUE(digests[0] == digests[1]) << "default vs avx2";
  EXPECT_TRUE(digests[0] == digests[2]) << "default vs avx512";
  EXPECT_TRUE(digests[0] == digest()) << "children vs this process";
  fs::remove_all(dir);
}
