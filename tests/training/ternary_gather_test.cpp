// 2-bit gathers of sharded ternary weights: the scale made from the ranks' row and group sums is bit
// for bit the quantizer's, and the weight rebuilt from the gathered codes quantizes (with BitLinear's
// own quantizer) to the original codes and exactly that scale, so a BitLinear computes the same output
// from it as from the true weight (the float gather).
#include "training/ternary_gather.hpp"

#include <gtest/gtest.h>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "training/shard_layout.hpp"

namespace {
using namespace bitqat::training;
using bitqat::bitlinear::Granularity;
using bitqat::bitlinear::WeightQuantSpec;

TEST(TernaryGather, FlatGroupsOfEachGranularity) {
  EXPECT_EQ(flat_groups(12, 4, 4, true).group, 12);  // per tensor: one group, runs are the rows
  EXPECT_EQ(flat_groups(12, 4, 4, true).run, 4);
  EXPECT_EQ(flat_groups(12, 4, 4, true).runs, 3);
  EXPECT_EQ(flat_groups(12, 4, 4, false).group, 4);  // per channel: the row
  EXPECT_EQ(flat_groups(12, 6, 3, false).group, 3);  // per group dividing the row
  EXPECT_EQ(flat_groups(12, 6, 3, false).count, 4);
  EXPECT_EQ(flat_groups(12, 6, 3, false).runs, 4);
  EXPECT_FALSE(flat_groups(12, 6, 4, false).ok);       // ragged: 4 does not divide 6
  EXPECT_EQ(flat_groups(12, 6, 128, false).group, 6);  // a group longer than the row is the row
}

WeightQuantSpec spec_of(Granularity gran, int64_t group) {
  WeightQuantSpec s;
  s.granularity = gran;
  s.group_size = group;
  return s;
}

// A weight whose |W| spans several binades (so float sums in different orders differ), in
// whole-row chunks of the sharded layout.
at::Tensor heavy_tailed(int64_t rows, int64_t cols) {
  return at::randn({rows, cols}) * at::exp(at::randn({rows, cols}) * 2.0);
}

struct Gathered {
  at::Tensor gamma;    // from the ranks' run sums, as float [count]
  at::Tensor rebuilt;  // [rows, cols]
};

Gathered gather_over(const at::Tensor& w, const WeightQuantSpec& spec, int world) {
  const int64_t rows = w.size(0), cols = w.size(1), numel = w.numel();
  const auto sg = bitqat::bitlinear::scale_grouping(spec, w.sizes());
  const auto g = flat_groups(numel, cols, sg.group, sg.per_tensor);
  EXPECT_TRUE(g.ok);
  ShardedParam p;
  p.numel = numel;
  p.shape = {rows, cols};
  p.chunk = shard_chunk(p.shape, world);
  // The all-reduce: each run's sum comes from the one rank that holds it, zeros from the others.
  at::Tensor total = at::zeros({g.runs}, at::kDouble);
  std::vector<at::Tensor> chunks;
  for (int r = 0; r < world; ++r) {
    chunks.push_back(take_chunk(w.reshape({-1}), p, r));
    total += run_sums_of_chunk(chunks.back(), p.begin(r), p.end(r), g);
  }
  Gathered out;
  out.gamma = scales_of_runs(total, g);
  std::vector<at::Tensor> packed;
  for (int r = 0; r < world; ++r) {
    packed.push_back(pack_ternary_chunk(chunks[static_cast<size_t>(r)], p.begin(r), p.end(r), g, out.gamma, spec.eps));
    EXPECT_EQ(packed.back().numel(), p.chunk / 4);
  }
  // 16x fewer bytes than float32 on the wire.
  EXPECT_EQ(at::cat(packed).numel() * 16, world * p.chunk * 4);
  out.rebuilt = unpack_ternary(at::cat(packed), numel, g, out.gamma).view({rows, cols});
  return out;
}

// Per tensor, per channel and per group, over 1 to 4 ranks, with rows that split unevenly.
TEST(TernaryGather, ScalesAreTheQuantizersBitForBitAndTheRebuiltWeightQuantizesToThem) {
  at::manual_seed(11);
  for (const auto& [gran, group] : std::vector<std::pair<Granularity, int64_t>>{
           {Granularity::kPerTensor, 128}, {Granularity::kPerChannel, 128}, {Granularity::kPerGroup, 16}}) {
    const auto spec = spec_of(gran, group);
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{20, 48}, {13, 96}, {7, 32}}) {
      const auto w = heavy_tailed(rows, cols);
      const auto want = bitqat::bitlinear::quantize_weight(w, spec);
      for (const int world : {1, 2, 3, 4}) {
        const auto got = gather_over(w, spec, world);
        const std::string what = "granularity " + std::to_string(static_cast<int>(gran)) + " shape " +
                                 std::to_string(rows) + "x" + std::to_string(cols) + " world " + std::to_string(world);
        EXPECT_TRUE(at::equal(got.gamma, want.scales.reshape({-1}))) << what;
        const auto again = bitqat::bitlinear::quantize_weight(got.rebuilt, spec);
        EXPECT_TRUE(at::equal(again.codes, want.codes)) << what;
        EXPECT_TRUE(at::equal(again.scales, want.scales)) << what << ": "
                                                          << (again.scales - want.scales).abs().max().item<float>();
      }
    }
  }
}

// The layer's forward at lambda 1 from the 2-bit gather is the float gather's, bit for bit.
TEST(TernaryGather, ForwardFromTheCodesIsTheFloatGathersForward) {
  at::manual_seed(12);
  for (const auto gran : {Granularity::kPerTensor, Granularity::kPerChannel}) {
    bitqat::bitlinear::BitLinearOptions o(64, 24);
    o.quant.weight.granularity = gran;
    bitqat::bitlinear::BitLinear layer(o);
    at::NoGradGuard no_grad;
    const auto w = layer->weight.detach().clone();
    const auto x = at::randn({5, 64});
    const auto y = layer(x);
    layer->weight.copy_(gather_over(w, o.quant.weight, 3).rebuilt);
    EXPECT_TRUE(at::equal(layer(x), y)) << (layer(x) - y).abs().max().item<float>();
  }
}

// Groups of 5 and 12 (not powers of two, where gamma * n is not always a float32) with every count of
// non-zero codes: the rebuilt group's scale lands on gamma exactly (for one or two non-zero codes
// through a small magnitude on a zero code).
TEST(TernaryGather, EveryCountOfNonZeroCodesLandsOnTheScale) {
  at::manual_seed(13);
  for (const int64_t n : {int64_t{5}, int64_t{12}}) {
    const int64_t rows = 400;
    // Row r: a few large weights among small ones, so that 1 .. n non-zero codes occur.
    auto w = at::randn({rows, n}) * 0.01;
    const auto big = at::rand({rows, n}).lt(at::linspace(0.02, 1.0, rows).unsqueeze(1));
    w = at::where(big, at::randn({rows, n}) * at::exp(at::randn({rows, 1})), w);
    // The last rows: magnitudes within a factor 2, so every code is non-zero.
    w.narrow(0, rows - 20, 20).copy_((at::rand({20, n}) + 1.0) * at::randn({20, n}).sign());
    const auto spec = spec_of(Granularity::kPerChannel, 128);
    const auto want = bitqat::bitlinear::quantize_weight(w, spec);
    const auto got = gather_over(w, spec, 2);
    const auto again = bitqat::bitlinear::quantize_weight(got.rebuilt, spec);
    EXPECT_TRUE(at::equal(again.codes, want.codes)) << "n " << n;
    const auto nnz = want.codes.abs().sum(1);
    EXPECT_EQ(nnz.min().item<int64_t>(), 1) << "n " << n;  // the cases occur
    EXPECT_EQ(nnz.max().item<int64_t>(), n) << "n " << n;
    // Some groups needed the small magnitude on a zero code (which stays code 0).
    EXPECT_GT((got.rebuilt.ne(0) & want.codes.eq(0)).sum().item<int64_t>(), 0) << "n " << n;
    const auto miss = again.scales.ne(want.scales);
    EXPECT_EQ(miss.sum().item<int64_t>(), 0) << "n " << n << ": rows " << at::nonzero(miss.reshape({-1})).reshape({-1})
                                             << " nnz " << nnz.index({miss.reshape({-1})});
  }
}

TEST(TernaryGather, AllZeroGroupsStayZero) {
  auto w = at::randn({4, 16});
  w[2].zero_();
  const auto g = flat_groups(64, 16, 16, false);
  const auto gamma = (w.abs().sum(1) / 16.0).to(at::kFloat);
  const auto rebuilt = unpack_ternary(pack_ternary_chunk(w.reshape({-1}), 0, 64, g, gamma, 1e-5), 64, g, gamma);
  EXPECT_EQ(rebuilt.view({4, 16})[2].abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(rebuilt.isfinite().all().item<bool>());
}

TEST(TernaryGather, ARunSplitAcrossChunksIsRefused) {
  const auto g = flat_groups(32, 16, 16, true);
  EXPECT_THROW(run_sums_of_chunk(at::zeros({16}), 8, 24, g), std::invalid_argument);
}

}  // namespace
