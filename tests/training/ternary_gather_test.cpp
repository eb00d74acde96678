// 2-bit gathers of sharded ternary weights: the scale from the ranks' partial sums is the tensor's
// absmean, and the weight rebuilt from the gathered codes quantizes (with BitLinear's own quantizer)
// to the codes of the original weight, with its scale.
#include "training/ternary_gather.hpp"

#include <gtest/gtest.h>

#include "bitlinear/quantizers.hpp"
#include "training/shard_layout.hpp"

namespace {
using namespace bitqat::training;

TEST(TernaryGather, FlatGroupsOfEachGranularity) {
  EXPECT_EQ(flat_groups(12, 4, 4, true).group, 12);       // per tensor
  EXPECT_EQ(flat_groups(12, 4, 4, false).group, 4);       // per channel: the row
  EXPECT_EQ(flat_groups(12, 6, 3, false).group, 3);       // per group dividing the row
  EXPECT_EQ(flat_groups(12, 6, 3, false).count, 4);
  EXPECT_FALSE(flat_groups(12, 6, 4, false).ok);          // ragged: 4 does not divide 6
  EXPECT_EQ(flat_groups(12, 6, 128, false).group, 6);     // a group longer than the row is the row
}

TEST(TernaryGather, PartialSumsOfTheChunksAddUpToTheGroups) {
  // 5 rows of 7 (35 elements) over 3 ranks: chunks of 16 split rows and groups anywhere.
  const auto w = at::randn({5, 7}, at::kDouble);
  const auto g = flat_groups(35, 7, 7, false);
  ShardedParam p;
  p.numel = 35;
  p.chunk = shard_chunk(35, 3);
  ASSERT_EQ(p.chunk, 16);
  at::Tensor sum = at::zeros({5}, at::kDouble);
  for (int r = 0; r < 3; ++r) {
    const auto chunk = take_chunk(w.reshape({-1}), p, r);
    sum += partial_abs_sums(chunk, p.begin(r), p.end(r), g);
  }
  EXPECT_TRUE(at::allclose(sum, w.abs().sum(1), 1e-14, 0.0));
}

// The whole path for per-tensor, per-channel and per-group scales over 1, 2 and 3 ranks.
TEST(TernaryGather, RebuiltWeightsQuantizeToTheSameCodesAndScales) {
  using bitqat::bitlinear::WeightQuant;
  const auto& ternary = bitqat::bitlinear::traits(WeightQuant::kTernary);
  const double eps = 1e-5;
  for (const bool per_tensor : {true, false}) {
    for (const int64_t group : {int64_t{48}, int64_t{16}}) {
      if (per_tensor && group != 48) continue;
      for (const int world : {1, 2, 3}) {
        const int64_t rows = 20, cols = 48, numel = rows * cols;
        const auto w = at::randn({rows, cols}) * 0.02;
        const auto g = flat_groups(numel, cols, group, per_tensor);
        ASSERT_TRUE(g.ok);
        ShardedParam p;
        p.numel = numel;
        p.chunk = shard_chunk(numel, world);
        // The global scale: one all-reduce of the partial sums (here: their sum), / n.
        at::Tensor total = at::zeros({g.count}, at::kDouble);
        std::vector<at::Tensor> chunks;
        for (int r = 0; r < world; ++r) {
          chunks.push_back(take_chunk(w.reshape({-1}), p, r));
          total += partial_abs_sums(chunks.back(), p.begin(r), p.end(r), g);
        }
        const auto gamma = (total / static_cast<double>(g.group)).to(at::kFloat);
        std::vector<at::Tensor> packed;
        for (int r = 0; r < world; ++r) {
          packed.push_back(pack_ternary_chunk(chunks[static_cast<size_t>(r)], p.begin(r), p.end(r), g, gamma, eps));
          EXPECT_EQ(packed.back().numel(), p.chunk / 4);
        }
        const auto rebuilt = unpack_ternary(at::cat(packed), numel, g, gamma).view({rows, cols});
        const auto want = ternary.quantize(w, per_tensor ? cols : group, per_tensor, eps);
        const auto got = ternary.quantize(rebuilt, per_tensor ? cols : group, per_tensor, eps);
        EXPECT_TRUE(at::equal(got.codes, want.codes)) << "per_tensor " << per_tensor << " group " << group
                                                      << " world " << world;
        // The scales agree to float rounding (a sum in another order; mean |W'| = m * gamma / m).
        EXPECT_TRUE(at::allclose(got.gamma.reshape({-1}), want.gamma.reshape({-1}), 4e-7, 0.0))
            << (got.gamma.reshape({-1}) - want.gamma.reshape({-1})).abs().max().item<float>();
        // 16x fewer bytes than float32 on the wire.
        EXPECT_EQ(at::cat(packed).numel() * 16, world * p.chunk * 4);
      }
    }
  }
}

TEST(TernaryGather, AllZeroGroupsStayZero) {
  auto w = at::randn({4, 16});
  w[2].zero_();
  const auto g = flat_groups(64, 16, 16, false);
  const auto gamma = (w.abs().sum(1) / 16.0).to(at::kFloat);
  ShardedParam p;
  p.numel = 64;
  p.chunk = 64;
  const auto rebuilt = unpack_ternary(pack_ternary_chunk(w.reshape({-1}), 0, 64, g, gamma, 1e-5), 64, g, gamma);
  EXPECT_EQ(rebuilt.view({4, 16})[2].abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(rebuilt.isfinite().all().item<bool>());
}

}  // namespace
