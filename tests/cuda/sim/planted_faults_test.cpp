// The CPU harness catches each fault class in a copy of a real kernel (tests/cuda/sim/planted_faults.cpp):
// a data race (a removed __syncthreads), a wrong mma fragment layout (wrong sums), a shuffle in a
// lane-dependent branch (divergence) and, in the sanitizer build, an out-of-bounds write (a bound `<`
// turned into `<=`), a shift of 32 and a signed overflow. Each test first runs the unmodified
// kernel's launcher on the same input, which passes.
#include "tests/cuda/sim/planted_faults.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda/quant.hpp"
#include "cuda/reference.hpp"
#include "cuda/sim/runtime.hpp"
#include "cuda/w158a8.hpp"
#include "tests/cuda/sim/testing.hpp"

using namespace bitqat::cuda;

namespace {

using sim::testing::fault_of;
using sim::testing::line_of;

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

}  // namespace

#if !defined(__SANITIZE_ADDRESS__)  // race detection is the instrumented build's (cuda/sim/CMakeLists.txt)
TEST(PlantedFault, RemovedBarrierIsReportedAsARace) {
  const int64_t m = 2, k = 300;
  const auto x = randn(static_cast<size_t>(m * k), 1);
  std::vector<float> y(x.size()), r(static_cast<size_t>(m));
  rms_norm_rows(x.data(), DType::kF32, m, k, nullptr, 1e-6, y.data(), r.data(), nullptr);  // the original: clean
  const auto text = fault_of([&] { sim::faults::rms_norm_without_barrier(x.data(), m, k, y.data()); });
  EXPECT_NE(text.find("data race on shared memory"), std::string::npos) << text;
  // Both sides: the partial sum's store and the tree's read of another thread's partial.
  const std::string file = "tests/cuda/sim/planted_faults.cpp";
  const int store = line_of(file, "__device__ double canonical_block_sum", "smem[t] = v;");
  const int read = line_of(file, "__device__ double canonical_block_sum", "if (t < o) smem[t] += smem[t + o];");
  ASSERT_GT(store, 0);
  ASSERT_GT(read, 0);
  EXPECT_NE(text.find(file + ":" + std::to_string(store)), std::string::npos) << text;
  EXPECT_NE(text.find(file + ":" + std::to_string(read)), std::string::npos) << text;
}
#endif

TEST(PlantedFault, WrongFragmentIndexGivesWrongSums) {
  const int64_t m = 20, n = 16, k = 64, kp = padded_k(k);
  std::mt19937 rng(3);
  std::vector<int8_t> q(static_cast<size_t>(m * kp), 0), codes(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) q[static_cast<size_t>(i * kp + j)] = static_cast<int8_t>(rng() % 255 - 127);
  for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
  std::vector<uint32_t> packed(static_cast<size_t>(n * words_per_row(k)));
  pack_ternary_ref(codes.data(), n, k, packed.data());
  std::vector<int32_t> yr(static_cast<size_t>(m * n)), y(yr.size()), bad(yr.size());
  int_matmul_ref(q.data(), kp, packed.data(), m, n, k, 1, k, yr.data());
  w158a8_matmul_int32(q.data(), m, packed.data(), n, k, y.data(), nullptr);
  ASSERT_EQ(y, yr);  // the real kernel
  sim::faults::gemm_with_wrong_fragment(q.data(), m, k, packed.data(), n, bad.data());
  int wrong = 0;
  for (size_t i = 0; i < yr.size(); ++i) wrong += bad[i] != yr[i];
  EXPECT_GT(wrong, static_cast<int>(yr.size() / 4)) << "the planted layout fault went unseen";
}

TEST(PlantedFault, ShuffleInALaneDependentBranchIsReported) {
  const auto x = randn(1000, 2);
  std::vector<int8_t> q(x.size());
  float s = 0;
  quantize_tensor(x.data(), static_cast<int64_t>(x.size()), 1e-5f, 127, q.data(), &s, nullptr);  // the original
  const auto text =
      fault_of([&] { sim::faults::tensor_scale_with_divergent_shuffle(x.data(), static_cast<int64_t>(x.size()), &s); });
  EXPECT_NE(text.find("deadlock"), std::string::npos) << text;
  EXPECT_NE(text.find("shfl.sync.bfly at tests/cuda/sim/planted_faults.cpp:"), std::string::npos) << text;
  EXPECT_NE(text.find("__syncthreads at tests/cuda/sim/planted_faults.cpp:"), std::string::npos) << text;
}

#if defined(__SANITIZE_ADDRESS__)
TEST(PlantedFaultDeathTest, OutOfBoundsWriteIsReportedByAddressSanitizer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int64_t m = 3, k = 200, ldq = padded_k(k);
  const auto x = randn(static_cast<size_t>(m * k), 4);
  std::vector<int8_t> q(static_cast<size_t>(m * ldq));  // exactly sized
  std::vector<float> s(static_cast<size_t>(m));
  quantize_rows(x.data(), DType::kF32, m, k, ldq, 1e-5f, 127, nullptr, 0.0, q.data(), s.data(), nullptr);
  EXPECT_DEATH(sim::faults::quantize_rows_past_the_row(x.data(), m, k, ldq, q.data(), s.data()),
               "heap-buffer-overflow");
}

// Shared arrays are statics with AddressSanitizer's redzones; UndefinedBehaviorSanitizer's object-size
// check sees this store first when the helper is inlined.
TEST(PlantedFaultDeathTest, SharedMemoryOutOfBoundsIsReportedBySanitizers) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto x = randn(1000, 5);
  float s = 0;
  EXPECT_DEATH(sim::faults::tensor_scale_past_the_partials(x.data(), static_cast<int64_t>(x.size()), &s),
               "global-buffer-overflow|insufficient space for an object of type 'float'");
}

TEST(PlantedFaultDeathTest, SanitizersCatchOverReadsFullWidthShiftsAndInt32Overflow) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<uint32_t> packed(static_cast<size_t>(words_per_row(200)), 0x55555555u);  // one row, exact size
  int32_t out[1] = {};
  EXPECT_DEATH(sim::faults::vector_over_read(packed.data(), static_cast<int64_t>(packed.size()), out),
               "heap-buffer-overflow");
  EXPECT_DEATH(sim::faults::decode_with_full_width_shift(0x55555555u, out), "shift exponent 32 is too large");
  EXPECT_DEATH(sim::faults::int32_row_offset(int64_t{1} << 30, out), "signed integer overflow");
}
#endif
