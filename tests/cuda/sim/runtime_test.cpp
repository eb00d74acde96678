// The CPU harness's rules, each on a small kernel (tests/cuda/sim/harness_kernels.cpp): shuffles and
// votes against the CUDA C++ Programming Guide's definitions (written independently of the harness's
// PTX-pseudo-code implementation), barriers, the fault reports (races, divergence, deadlock, bad
// arguments) with the source lines they name, poisoning, scheduling orders, mma.sync against a
// hand-written fragment layout, and the intrinsics against hand-computed values.
#include "cuda/sim/runtime.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda/sim/harness_kernels.hpp"
#include "tests/cuda/sim/testing.hpp"

using namespace bitqat::cuda::sim;
using namespace bitqat::cuda::sim::testing;

namespace {

constexpr int kPoisonInt = static_cast<int>(0xDEADBEEFu);

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The Programming Guide's definition of each shuffle for lane `lane` of a full warp: the source lane,
// or -1 for "the caller's own value".
int guide_source(ShuffleMode mode, int lane, unsigned b, int width) {
  const int seg = lane / width * width, pos = lane % width;
  switch (mode) {
    case ShuffleMode::kIdx:
      return seg + static_cast<int>(b % static_cast<unsigned>(width));
    case ShuffleMode::kUp:
      return static_cast<unsigned>(pos) >= b ? lane - static_cast<int>(b) : -1;
    case ShuffleMode::kDown:
      return static_cast<unsigned>(pos) + b < static_cast<unsigned>(width) ? lane + static_cast<int>(b) : -1;
    case ShuffleMode::kBfly: {
      const unsigned src = static_cast<unsigned>(lane) ^ b;
      // "each group of width consecutive threads can access elements from earlier groups, but gets its own
      // value for later ones"
      return src / static_cast<unsigned>(width) > static_cast<unsigned>(lane / width) || src >= 32
                 ? -1
                 : static_cast<int>(src);
    }
  }
  return -1;
}

const char* mode_name(ShuffleMode m) {
  return m == ShuffleMode::kIdx ? "idx" : m == ShuffleMode::kUp ? "up" : m == ShuffleMode::kDown ? "down" : "xor";
}

}  // namespace

TEST(SimShuffle, EveryModeAndWidthFollowsTheProgrammingGuide) {
  std::vector<int> in(32), out(32);
  for (int i = 0; i < 32; ++i) in[static_cast<size_t>(i)] = 1000 + i;
  for (const auto mode : {ShuffleMode::kIdx, ShuffleMode::kUp, ShuffleMode::kDown, ShuffleMode::kBfly}) {
    for (const int width : {1, 2, 4, 8, 16, 32}) {
      for (const unsigned b0 : {0u, 1u, 3u, 5u, 16u, 17u, 31u, 32u, 100u}) {
        std::vector<unsigned> b(32, b0);
        if (mode == ShuffleMode::kIdx) {
          for (int i = 0; i < 32; ++i) b[static_cast<size_t>(i)] = (b0 + 7u * static_cast<unsigned>(i)) % 64u;
        }
        ASSERT_EQ(shuffle_int(32, mode, 0xffffffffu, in.data(), b.data(), width, out.data()), 0);
        for (int l = 0; l < 32; ++l) {
          const int src = guide_source(mode, l, b[static_cast<size_t>(l)], width);
          const int want = src < 0 ? in[static_cast<size_t>(l)] : in[static_cast<size_t>(src)];
          ASSERT_EQ(out[static_cast<size_t>(l)], want)
              << mode_name(mode) << " width " << width << " b " << b[static_cast<size_t>(l)] << " lane " << l;
        }
      }
    }
  }
}

TEST(SimShuffle, SourcesOutsideTheMaskOrInactiveGivePoison) {
  std::vector<int> in(32), out(32, -1);
  for (int i = 0; i < 32; ++i) in[static_cast<size_t>(i)] = i;
  std::vector<unsigned> one(32, 1u);
  // Lanes 0-15 take part; lane 15's down-by-one source, lane 16, is outside the mask.
  ASSERT_EQ(shuffle_int(32, ShuffleMode::kDown, 0x0000ffffu, in.data(), one.data(), 32, out.data()), 0);
  for (int l = 0; l < 15; ++l) EXPECT_EQ(out[static_cast<size_t>(l)], l + 1);
  EXPECT_EQ(out[15], kPoisonInt);
  EXPECT_EQ(out[16], -1);  // not a member: did not run the shuffle
  // A block of 20 threads: lanes 20-31 do not exist, so lane 19's source is inactive.
  std::fill(out.begin(), out.end(), -1);
  ASSERT_EQ(shuffle_int(20, ShuffleMode::kDown, 0xffffffffu, in.data(), one.data(), 32, out.data()), 0);
  EXPECT_EQ(out[18], 19);
  EXPECT_EQ(out[19], kPoisonInt);
  // Floating point poison is NaN; 64-bit values move whole.
  std::vector<float> fin(32, 1.5f), fout(32);
  ASSERT_EQ(shuffle_float(20, ShuffleMode::kDown, 0xffffffffu, fin.data(), one.data(), 32, fout.data()), 0);
  EXPECT_EQ(fout[0], 1.5f);
  EXPECT_TRUE(std::isnan(fout[19]));
  std::vector<double> din(32), dout(32);
  for (int i = 0; i < 32; ++i) din[static_cast<size_t>(i)] = 1e300 * i + 0.25;
  std::vector<unsigned> three(32, 3u);
  ASSERT_EQ(shuffle_double(32, ShuffleMode::kBfly, 0xffffffffu, din.data(), three.data(), 32, dout.data()), 0);
  for (int l = 0; l < 32; ++l) EXPECT_EQ(dout[static_cast<size_t>(l)], din[static_cast<size_t>(l ^ 3)]);
}

TEST(SimShuffle, TwoWarpsShuffleIndependently) {
  std::vector<int> in(64), out(64);
  for (int i = 0; i < 64; ++i) in[static_cast<size_t>(i)] = 5 * i;
  std::vector<unsigned> src(64, 0u);
  ASSERT_EQ(shuffle_int(64, ShuffleMode::kIdx, 0xffffffffu, in.data(), src.data(), 32, out.data()), 0);
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[static_cast<size_t>(t)], t < 32 ? 0 : 160) << t;
}

TEST(SimVote, BallotAnyAllOverTheMembers) {
  std::vector<int> pred(32, 0);
  pred[3] = pred[7] = pred[20] = 1;
  std::vector<unsigned> ballot(32);
  std::vector<int> any(32), all(32);
  ASSERT_EQ(vote(32, 0xffffffffu, pred.data(), ballot.data(), any.data(), all.data()), 0);
  EXPECT_EQ(ballot[0], (1u << 3) | (1u << 7) | (1u << 20));
  EXPECT_EQ(any[31], 1);
  EXPECT_EQ(all[31], 0);
  // Only lanes 3 and 7 take part, and both hold the predicate.
  ASSERT_EQ(vote(32, (1u << 3) | (1u << 7), pred.data(), ballot.data(), any.data(), all.data()), 0);
  EXPECT_EQ(ballot[3], (1u << 3) | (1u << 7));
  EXPECT_EQ(all[7], 1);
}

TEST(SimBarrier, SharedMemoryExchangeIsCorrectUnderEveryOrder) {
  const int blocks = 3, threads = 96;
  std::vector<int> in(blocks * threads), out(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i) * 3 + 1;
  for (const auto order : {Order::kIndex, Order::kReverse, Order::kShuffle}) {
    ScopedOptions o(Options{order, 11, 0xA5});
    reset_stats();
    ASSERT_EQ(exchange(blocks, threads, true, in.data(), out.data()), 0);
    for (int b = 0; b < blocks; ++b) {
      for (int t = 0; t < threads; ++t) {
        EXPECT_EQ(out[static_cast<size_t>(b * threads + t)], in[static_cast<size_t>(b * threads + (t + 1) % threads)]);
      }
    }
    const auto s = stats();
    EXPECT_EQ(s.blocks, 3u);
    EXPECT_EQ(s.barriers, 3u);
    EXPECT_EQ(s.threads, 3u * threads);
    EXPECT_GT(s.shared_accesses, 0u);
  }
}

TEST(SimRace, AMissingBarrierIsReportedWithBothThreadsAndLines) {
  std::vector<int> in(64, 1), out(64);
  const auto text = fault_of([&] { exchange(1, 64, false, in.data(), out.data()); });
  EXPECT_TRUE(contains(text, "data race on shared memory")) << text;
  // In index order thread 0 reads s[1] before thread 1 writes it: the write s[t] = ... by thread 1
  // after the read s[(t + 1) % n] by thread 0.
  const std::string file = "tests/cuda/sim/harness_kernels.cpp";
  const int write = line_of(file, "exchange_kernel", "s[t] = in[base + t];");
  const int read = line_of(file, "exchange_kernel", "out[base + t] = s[(t + 1) % n];");
  EXPECT_TRUE(contains(text, "thread (1,0,0) of block (0,0,0) writes 4 bytes at " + file + ":" + std::to_string(write) +
                                 " (exchange_kernel)"))
      << text;
  EXPECT_TRUE(contains(text, "thread (0,0,0) of block (0,0,0) read them at " + file + ":" + std::to_string(read)))
      << text;
}

TEST(SimRace, AtomicsDoNotRaceEachOtherButDoRaceAPlainRead) {
  std::vector<int> out(2, -1);
  ASSERT_EQ(shared_counter(128, false, out.data()), 0);
  EXPECT_EQ(out[0], 128);
  const auto text = fault_of([&] { shared_counter(128, true, out.data()); });
  EXPECT_TRUE(contains(text, "data race")) << text;
  EXPECT_TRUE(contains(text, "counter_kernel")) << text;
}

TEST(SimRace, AtomicRaceNamesTheAtomicsLine) {
  std::vector<int> out(2, -1);
  const auto text = fault_of([&] { shared_counter(128, true, out.data()); });
  const std::string file = "tests/cuda/sim/harness_kernels.cpp";
  const int atomic = line_of(file, "counter_kernel", "atomicAdd(&counter, 1);");
  const int plain = line_of(file, "counter_kernel", "out[1] = counter;");
  EXPECT_TRUE(contains(text, file + ":" + std::to_string(atomic) + " (atomic)")) << text;
  EXPECT_TRUE(contains(text, file + ":" + std::to_string(plain))) << text;
}

TEST(SimRace, AWriteAfterReadsOfOtherWarpsIsARaceHoweverManyReadersCame) {
  // 96 threads read; the last thread's write follows only a __syncwarp, which orders its own warp's
  // reads but not those of warps 0 and 1 (whose readers have left the last-readers slots).
  for (const auto& config : harness_configs()) {
    ScopedOptions o(config);
    std::vector<int> out(96, -1);
    const auto text = fault_of([&] { readers_then_write(96, out.data()); });
    EXPECT_TRUE(contains(text, "data race on shared memory")) << config_name(config) << ": " << text;
    EXPECT_TRUE(contains(text, "thread (95,0,0) of block (0,0,0) writes 4 bytes")) << config_name(config) << text;
  }
  // One warp: the __syncwarp orders every read before the write.
  std::vector<int> out(32, -1);
  EXPECT_EQ(fault_of([&] { readers_then_write(32, out.data()); }), "no fault");
  for (int v : out) EXPECT_EQ(v, 5);
}

TEST(SimSyncwarp, HalfWarpMasksOrderTheirOwnLanes) {
  for (const auto& config : harness_configs()) {
    ScopedOptions o(config);
    std::vector<int> out(32, -1);
    ASSERT_EQ(fault_of([&] { half_warp_exchange(true, out.data()); }), "no fault") << config_name(config);
    for (int t = 0; t < 32; ++t) EXPECT_EQ(out[static_cast<size_t>(t)], 100 + t / 16 * 16 + (t + 1) % 16) << t;
  }
  std::vector<int> out(32);
  const auto text = fault_of([&] { half_warp_exchange(false, out.data()); });
  EXPECT_TRUE(contains(text, "with no __syncthreads between and no __syncwarp of both lanes")) << text;
}

TEST(SimSyncwarp, CallSitesMayDifferOnVolta) {
  // bar.warp.sync on sm_70 and later: the lanes of the mask meet wherever each calls it.
  for (const auto& config : harness_configs()) {
    ScopedOptions o(config);
    std::vector<int> out(32, -1);
    ASSERT_EQ(fault_of([&] { syncwarp_two_sites(out.data()); }), "no fault") << config_name(config);
    for (int t = 0; t < 32; ++t) EXPECT_EQ(out[static_cast<size_t>(t)], 200 + (t ^ 16)) << t;
  }
}

TEST(SimShuffle, ConsecutiveShufflesWithOverlappingMasksMeetTheirOwnPartners) {
  std::vector<int> in(32), out(32, -1);
  for (int i = 0; i < 32; ++i) in[static_cast<size_t>(i)] = 1000 + i;
  for (const auto& config : harness_configs()) {
    ScopedOptions o(config);
    ASSERT_EQ(fault_of([&] { overlapping_shuffles(in.data(), out.data()); }), "no fault") << config_name(config);
    // Lane t < 16 first holds in[t ^ 1]; lane t then takes lane t ^ 16's value.
    for (int t = 0; t < 32; ++t) {
      const int partner = t ^ 16;
      const int want = partner < 16 ? 1000 + (partner ^ 1) : 1000 + partner;
      EXPECT_EQ(out[static_cast<size_t>(t)], want) << config_name(config) << " lane " << t;
    }
  }
}

TEST(SimShuffle, LanesFromTwoCallSitesAreDivergentUnlessThePtxRuleIsAsked) {
  std::vector<int> out(32, -1);
  const auto text = fault_of([&] { two_site_shuffle(out.data()); });
  const std::string file = "tests/cuda/sim/harness_kernels.cpp";
  const int first = line_of(file, "two_site_shuffle_kernel", "__shfl_xor_sync");
  EXPECT_TRUE(contains(text,
                       "divergent shfl.sync.bfly in block (0,0,0), warp 0: lanes meet from different call "
                       "sites (lanes 0x0000ffff at " +
                           file + ":" + std::to_string(first) + "; lanes 0xffff0000 at " + file + ":" +
                           std::to_string(first + 2) + ")"))
      << text;
  // PTX on sm_70 and later: shfl.sync waits for the same operation and mask, wherever it is.
  for (const auto& config : harness_configs()) {
    Options o = config;
    o.same_site_collectives = false;
    ScopedOptions scoped(o);
    std::fill(out.begin(), out.end(), -1);
    ASSERT_EQ(fault_of([&] { two_site_shuffle(out.data()); }), "no fault") << config_name(config);
    for (int t = 0; t < 32; ++t) EXPECT_EQ(out[static_cast<size_t>(t)], t ^ 16) << t;
  }
}

TEST(SimShuffle, LanesThatDisagreeAboutTheMaskAreReported) {
  // The harness sees both masks when the lanes wait together: here in reverse order (lanes 16-31
  // arrive first and wait for lanes 0-15). In index order lanes 0-15 meet among themselves first, and
  // the later full-mask shuffle finds them exited; kernel tests run every order for this reason.
  ScopedOptions o(Options{Order::kReverse, 1, 0xA5});
  const auto text = fault_of([] { mask_disagreement(); });
  EXPECT_TRUE(contains(text, "lanes disagree about the member mask")) << text;
  EXPECT_TRUE(contains(text, "0x0000ffff")) << text;
  EXPECT_TRUE(contains(text, "0xffffffff")) << text;
}

TEST(SimSpin, AVolatileSpinWaitEndsWhenAnotherWarpSetsTheFlag) {
  if (!instrumented()) GTEST_SKIP() << "volatile reads yield only in the instrumented build";
  for (const auto& config : harness_configs()) {
    ScopedOptions o(config);
    int out = -1;
    ASSERT_EQ(fault_of([&] { spin_wait(true, &out); }), "no fault") << config_name(config);
    EXPECT_EQ(out, 7);
  }
  // A plain store to the flag races with the volatile reads; a flag nobody sets is reported.
  int out = -1;
  const auto text = fault_of([&] { spin_wait(false, &out); });
  EXPECT_TRUE(contains(text, "writes 4 bytes")) << text;
  EXPECT_TRUE(contains(text, "read (volatile) them")) << text;
  EXPECT_TRUE(contains(fault_of([] { spin_forever(); }), "a spin-wait on volatile shared memory never ends"));
}

TEST(SimPoison, GlobalMemoryIsNeitherPoisonedNorWatched) {
  std::vector<int> out(64, -1);
  ScopedOptions o(Options{Order::kIndex, 1, 0xA5});
  reset_stats();
  ASSERT_EQ(fault_of([&] { read_device_globals(64, out.data()); }), "no fault");
  for (int v : out) EXPECT_EQ(v, 0);
  EXPECT_EQ(stats().uninitialised_reads, 0u);
  EXPECT_EQ(stats().shared_accesses, 0u);
}

TEST(SimLaunch, AThreadMayHoldAQuarterMegabyteOfLocals) {
  long long sum = -1;
  const int n = 1 << 16;  // 256 KiB of int
  ASSERT_EQ(big_local_array(n, &sum), 0);
  EXPECT_EQ(sum, static_cast<long long>(n) * (n - 1) / 2);
}

TEST(SimLaunchDeathTest, AThreadWhoseLocalsOutgrowItsStackIsNamed) {
  if (!instrumented()) GTEST_SKIP() << "AddressSanitizer reports stack overflows itself";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(overflow_stack(), "a kernel thread overflowed its stack");
}

TEST(SimOrder, ASeedRepeatsItsOrderAndAnotherSeedDoesNot) {
  const int blocks = 6, threads = 64;
  auto orders = [&](uint64_t seed) {
    ScopedOptions o(Options{Order::kShuffle, seed, 0xA5});
    std::vector<int> t(blocks * threads), b(blocks);
    EXPECT_EQ(run_order(blocks, threads, t.data(), b.data()), 0);
    t.insert(t.end(), b.begin(), b.end());
    return t;
  };
  const auto first = orders(99), again = orders(99), other = orders(100);
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);
}

TEST(SimPoison, UnwrittenSharedMemoryReadsThePatternAndNothingCarriesOverBlocks) {
  std::vector<uint8_t> out(64);
  for (const uint8_t p : {uint8_t{0xA5}, uint8_t{0x5A}}) {
    ScopedOptions o(Options{Order::kIndex, 1, p});
    reset_stats();
    ASSERT_EQ(read_unwritten(64, false, out.data()), 0);
    for (auto v : out) ASSERT_EQ(v, p);
    EXPECT_EQ(stats().uninitialised_reads, 64u);
    // Block 0 writes 7s; block 1 still reads the pattern.
    ASSERT_EQ(read_unwritten(64, true, out.data()), 0);
    for (auto v : out) ASSERT_EQ(v, p);
  }
}

TEST(SimDivergence, BarriersAtTwoCallSitesAreReported) {
  const auto text = fault_of([] { divergent_barrier(64); });
  EXPECT_TRUE(contains(text, "divergent __syncthreads")) << text;
  EXPECT_TRUE(contains(text, "threads 0-15 wait at tests/cuda/sim/harness_kernels.cpp:")) << text;
  EXPECT_TRUE(contains(text, "threads 16-63 wait at tests/cuda/sim/harness_kernels.cpp:")) << text;
}

TEST(SimDivergence, AThreadThatExitsBeforeABarrierIsReported) {
  const auto text = fault_of([] { exit_before_barrier(32); });
  EXPECT_TRUE(contains(text, "is reached while threads 5 have exited")) << text;
}

TEST(SimDivergence, ADeadlockNamesEveryWait) {
  const auto text = fault_of([] { shuffle_barrier_deadlock(); });
  EXPECT_TRUE(contains(text, "deadlock in block (0,0,0)")) << text;
  EXPECT_TRUE(contains(text, "threads 0-15 wait at shfl.sync.bfly at tests/cuda/sim/harness_kernels.cpp:")) << text;
  EXPECT_TRUE(contains(text, "threads 16-31 wait at __syncthreads at tests/cuda/sim/harness_kernels.cpp:")) << text;
}

TEST(SimDivergence, BadCollectiveArgumentsAreReported) {
  EXPECT_TRUE(contains(fault_of([] { lane_outside_mask(); }), "is not in its member mask 0x0000ffff"));
  EXPECT_TRUE(contains(fault_of([] { bad_width(); }), "shuffle width 12 is not a power of two"));
  EXPECT_TRUE(contains(fault_of([] { mma_missing_lane(); }), "needs all 32 lanes; lanes 3 have exited"));
}

// mma.sync m16n8k32 with fragments placed by a layout written out here from the PTX ISA's table (not
// from cuda/mma_m16n8k32.hpp), against a plain integer product; the accumulators wrap.
TEST(SimMma, EqualsTheProductOfTheFragmentsThePtxIsaDescribes) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> val(-128, 127);
  for (int trial = 0; trial < 3; ++trial) {
    int8_t a[16][32], b[32][8];
    int32_t c[16][8];
    for (auto& r : a)
      for (auto& v : r) v = static_cast<int8_t>(val(rng));
    for (auto& r : b)
      for (auto& v : r) v = static_cast<int8_t>(val(rng));
    for (auto& r : c)
      for (auto& v : r) v = trial == 2 ? std::numeric_limits<int32_t>::max() - 5 : val(rng) * 1000;
    uint32_t af[32 * 4] = {}, bf[32 * 2] = {};
    int32_t cf[32 * 4], df[32 * 4];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int reg = 0; reg < 4; ++reg) {
        const int row = g + (reg % 2) * 8, col0 = t * 4 + (reg / 2) * 16;  // a0-3 | a4-7 | a8-11 | a12-15
        for (int byte = 0; byte < 4; ++byte)
          af[lane * 4 + reg] |= static_cast<uint32_t>(static_cast<uint8_t>(a[row][col0 + byte])) << (8 * byte);
      }
      for (int reg = 0; reg < 2; ++reg) {
        for (int byte = 0; byte < 4; ++byte)
          bf[lane * 2 + reg] |= static_cast<uint32_t>(static_cast<uint8_t>(b[t * 4 + reg * 16 + byte][g]))
                                << (8 * byte);
      }
      for (int i = 0; i < 4; ++i) cf[lane * 4 + i] = c[g + (i / 2) * 8][t * 2 + i % 2];
    }
    ASSERT_EQ(mma(af, bf, cf, df), 0);
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = g + (i / 2) * 8, col = t * 2 + i % 2;
        int64_t want = c[row][col];
        for (int k = 0; k < 32; ++k) want += int64_t{a[row][k]} * b[k][col];
        const auto wrapped = static_cast<int32_t>(static_cast<uint32_t>(want));
        ASSERT_EQ(df[lane * 4 + i], wrapped) << "trial " << trial << " lane " << lane << " c" << i;
      }
    }
  }
}

TEST(SimOrder, IndexReverseAndShuffleRunThreadsAndBlocksInTheirOrders) {
  const int blocks = 4, threads = 8;
  std::vector<int> torder(blocks * threads), border(blocks);
  {
    ScopedOptions o(Options{Order::kIndex, 1, 0xA5});
    ASSERT_EQ(run_order(blocks, threads, torder.data(), border.data()), 0);
    for (int i = 0; i < blocks * threads; ++i) EXPECT_EQ(torder[static_cast<size_t>(i)], i);
  }
  {
    ScopedOptions o(Options{Order::kReverse, 1, 0xA5});
    ASSERT_EQ(run_order(blocks, threads, torder.data(), border.data()), 0);
    EXPECT_EQ(border[3], 0);
    EXPECT_EQ(torder[3 * threads + threads - 1], 0);  // last thread of the last block first
  }
  {
    ScopedOptions o(Options{Order::kShuffle, 42, 0xA5});
    ASSERT_EQ(run_order(blocks, threads, torder.data(), border.data()), 0);
    const auto first = torder;
    bool permuted = false;
    for (int i = 0; i < blocks * threads; ++i) permuted = permuted || torder[static_cast<size_t>(i)] != i;
    EXPECT_TRUE(permuted);
    ASSERT_EQ(run_order(blocks, threads, torder.data(), border.data()), 0);
    EXPECT_NE(torder, first);  // each launch draws its own permutations
  }
}

TEST(SimLaunch, BuiltInVariablesAndLaunchLimits) {
  const Dim3 grid{2, 3, 2}, block{4, 2, 3};
  std::vector<int> out(2 * 3 * 2 * 4 * 2 * 3 * 6, -1);
  ASSERT_EQ(builtins(grid, block, out.data()), 0);
  size_t i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 3; ++by)
      for (unsigned bx = 0; bx < 2; ++bx)
        for (unsigned tz = 0; tz < 3; ++tz)
          for (unsigned ty = 0; ty < 2; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, i += 6) {
              ASSERT_EQ(out[i], static_cast<int>(tx));
              ASSERT_EQ(out[i + 1], static_cast<int>(ty));
              ASSERT_EQ(out[i + 2], static_cast<int>(tz));
              ASSERT_EQ(out[i + 3], static_cast<int>(bx));
              ASSERT_EQ(out[i + 4], static_cast<int>(by));
              ASSERT_EQ(out[i + 5], static_cast<int>(bz));
            }
  constexpr int kInvalidConfiguration = 9;
  EXPECT_EQ(builtins(Dim3{1, 1, 1}, Dim3{1025, 1, 1}, out.data()), kInvalidConfiguration);
  EXPECT_EQ(builtins(Dim3{1, 65536, 1}, Dim3{1, 1, 1}, out.data()), kInvalidConfiguration);
  EXPECT_EQ(builtins(Dim3{0, 1, 1}, Dim3{1, 1, 1}, out.data()), kInvalidConfiguration);
}

TEST(SimIntrinsics, Dp4aVsub4RoundingAndBf16MatchHandValues) {
  // dp4a: 4 signed byte products plus c, wrapping: bytes (-1, 2, -128, 127) . (3, -4, -128, 1) = -3 - 8
  // + 16384 + 127 = 16500.
  const int a[] = {static_cast<int>(0x7F80'02FFu), 0x01010101, static_cast<int>(0x80808080u)};
  const int b[] = {static_cast<int>(0x0180'FC03u), 0x01010101, static_cast<int>(0x80808080u)};
  const int c[] = {10, std::numeric_limits<int>::max(), 0};
  int dp[3];
  unsigned vs[3];
  const float f[] = {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 3.49999976f, NAN, 3e9f, -3e9f, 1.00390625f, 1.01171875f};
  int f2i[11];
  float bf[11];
  ASSERT_EQ(intrinsics(a, b, c, 3, dp, vs, f, 11, f2i, bf), 0);
  EXPECT_EQ(dp[0], 16500 + 10);
  EXPECT_EQ(dp[1], std::numeric_limits<int>::min() + 3);  // max + 4 wraps
  EXPECT_EQ(dp[2], 4 * 16384);
  // vsub4 per byte: (0xFF - 0x03, 0x02 - 0xFC, 0x80 - 0x80, 0x7F - 0x01) mod 256 = (FC, 06, 00, 7E).
  EXPECT_EQ(vs[0], 0x7E0006FCu);
  EXPECT_EQ(vs[1], 0u);
  // Round half to even; NaN gives 0; saturation.
  const int want_f2i[] = {0, 2, 2, 0, -2, 3, 0, 2147483647, -2147483647 - 1, 1, 1};
  for (int i = 0; i < 11; ++i) EXPECT_EQ(f2i[i], want_f2i[i]) << f[i];
  // bf16 keeps 8 mantissa bits, ties to even: 1 + 2^-8 is a tie (to 1), 1 + 3 * 2^-8 rounds to 1 + 2^-6.
  EXPECT_EQ(bf[9], 1.0f);
  EXPECT_EQ(bf[10], 1.015625f);
  EXPECT_EQ(bf[0], 0.5f);
  EXPECT_TRUE(std::isnan(bf[6]));
}
