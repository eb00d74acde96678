// The mma.sync m16n8k32 fragment table (cuda/mma_m16n8k32.hpp): a bijection onto each matrix, the
// PTX ISA's entries for sample lanes by hand, and, on a GPU, the real instruction against the table
// (the probe launch/gpu_check.sh runs first; it skips without a GPU).
#include "cuda/mma_m16n8k32.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <set>
#include <utility>

#include "tests/cuda/mma_probe.hpp"

using namespace bitqat::cuda;

TEST(MmaFragments, EveryElementIsHeldByExactlyOneLaneRegisterByte) {
  std::set<std::pair<int, int>> a, b, c;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < mma::kAElems; ++i) {
      const auto e = mma::a_element(lane, i);
      ASSERT_TRUE(e.row >= 0 && e.row < mma::kM && e.col >= 0 && e.col < mma::kK);
      a.insert({e.row, e.col});
    }
    for (int i = 0; i < mma::kBElems; ++i) {
      const auto e = mma::b_element(lane, i);
      ASSERT_TRUE(e.row >= 0 && e.row < mma::kK && e.col >= 0 && e.col < mma::kN);
      b.insert({e.row, e.col});
    }
    for (int i = 0; i < mma::kCRegs; ++i) {
      const auto e = mma::c_element(lane, i);
      ASSERT_TRUE(e.row >= 0 && e.row < mma::kM && e.col >= 0 && e.col < mma::kN);
      c.insert({e.row, e.col});
    }
  }
  EXPECT_EQ(a.size(), static_cast<size_t>(mma::kM * mma::kK));
  EXPECT_EQ(b.size(), static_cast<size_t>(mma::kK * mma::kN));
  EXPECT_EQ(c.size(), static_cast<size_t>(mma::kM * mma::kN));
}

// PTX ISA, "Matrix Fragments for mma.m16n8k32" (.s8): lane 5 is groupID 1, threadID_in_group 1.
TEST(MmaFragments, SampleEntriesMatchThePtxIsaByHand) {
  const auto at = [](mma::Element e) { return std::make_pair(e.row, e.col); };
  EXPECT_EQ(at(mma::a_element(0, 0)), std::make_pair(0, 0));
  EXPECT_EQ(at(mma::a_element(0, 4)), std::make_pair(8, 0));
  EXPECT_EQ(at(mma::a_element(0, 8)), std::make_pair(0, 16));
  EXPECT_EQ(at(mma::a_element(0, 12)), std::make_pair(8, 16));
  EXPECT_EQ(at(mma::a_element(5, 0)), std::make_pair(1, 4));
  EXPECT_EQ(at(mma::a_element(5, 7)), std::make_pair(9, 7));
  EXPECT_EQ(at(mma::a_element(5, 11)), std::make_pair(1, 23));
  EXPECT_EQ(at(mma::a_element(31, 15)), std::make_pair(15, 31));
  EXPECT_EQ(at(mma::b_element(5, 0)), std::make_pair(4, 1));
  EXPECT_EQ(at(mma::b_element(5, 4)), std::make_pair(20, 1));
  EXPECT_EQ(at(mma::b_element(31, 7)), std::make_pair(31, 7));
  EXPECT_EQ(at(mma::c_element(5, 0)), std::make_pair(1, 2));
  EXPECT_EQ(at(mma::c_element(5, 1)), std::make_pair(1, 3));
  EXPECT_EQ(at(mma::c_element(5, 2)), std::make_pair(9, 2));
  EXPECT_EQ(at(mma::c_element(31, 3)), std::make_pair(15, 7));
}

// The real instruction on random fragments (and an accumulator that overflows) equals D = A B + C with
// A, B and C placed by the table: the CPU harness emulates exactly what the GPU does.
TEST(MmaFragments, TheGpuInstructionAgreesWithTheTable) {
  if (!bitqat::cuda::testing::gpu_present()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(20261206);
  for (int trial = 0; trial < 4; ++trial) {
    uint32_t a[32 * 4], b[32 * 2];
    int32_t c[32 * 4], d[32 * 4];
    for (auto& w : a) w = rng();
    for (auto& w : b) w = rng();
    for (auto& v : c) v = trial == 3 ? 0x7fffff00 : static_cast<int32_t>(rng() % 200001) - 100000;
    ASSERT_EQ(bitqat::cuda::testing::run_mma_probe(a, b, c, d), "");
    int8_t am[16][32] = {}, bm[32][8] = {};
    int32_t cm[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < mma::kAElems; ++i) {
        const auto e = mma::a_element(lane, i);
        am[e.row][e.col] = static_cast<int8_t>(a[lane * 4 + i / 4] >> (8 * (i % 4)));
      }
      for (int i = 0; i < mma::kBElems; ++i) {
        const auto e = mma::b_element(lane, i);
        bm[e.row][e.col] = static_cast<int8_t>(b[lane * 2 + i / 4] >> (8 * (i % 4)));
      }
      for (int i = 0; i < mma::kCRegs; ++i)
        cm[mma::c_element(lane, i).row][mma::c_element(lane, i).col] = c[lane * 4 + i];
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < mma::kCRegs; ++i) {
        const auto e = mma::c_element(lane, i);
        uint32_t want = static_cast<uint32_t>(cm[e.row][e.col]);
        for (int k = 0; k < 32; ++k) want += static_cast<uint32_t>(int32_t{am[e.row][k]} * int32_t{bm[k][e.col]});
        ASSERT_EQ(d[lane * 4 + i], static_cast<int32_t>(want)) << "trial " << trial << " lane " << lane << " d" << i;
      }
    }
  }
  std::printf("mma probe: the GPU's mma.sync m16n8k32 equals the fragment table on 4 x 32 lanes x 4 accumulators\n");
}
