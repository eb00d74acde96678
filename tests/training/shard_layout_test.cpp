// The sharded layout by hand: chunk sizes, padding, buckets and the round trip of chunks.
#include "training/shard_layout.hpp"

#include <gtest/gtest.h>

namespace {
using bitqat::training::make_shard_layout;
using bitqat::training::shard_chunk;

TEST(ShardLayout, ChunksAreEqualAlignedAndCoverTheParameter) {
  // 100 elements over 3 ranks: ceil(100 / 3) = 34 -> 48 (a multiple of 16); the ranks hold
  // [0, 48), [48, 96), [96, 100) and 44 padding elements.
  EXPECT_EQ(shard_chunk({100}, 3), 48);
  EXPECT_EQ(shard_chunk({64}, 4), 16);
  EXPECT_EQ(shard_chunk({65}, 4), 32);
  EXPECT_EQ(shard_chunk({1}, 8), 16);  // 7 ranks hold padding only
  EXPECT_EQ(shard_chunk({0}, 2), 0);
  EXPECT_EQ(shard_chunk({}, 2), 16);  // a scalar: one element
  // Whole rows: 576 x 1536 over 8 is 72 rows each (a multiple of lcm(16, 1536) = 1536).
  EXPECT_EQ(shard_chunk({576, 1536}, 8), 576 * 1536 / 8);
  // 10 x 10 over 3: ceil(100 / 3) = 34 -> 80, a multiple of lcm(16, 10) = 80: 8 rows, 2 rows, none.
  EXPECT_EQ(shard_chunk({10, 10}, 3), 80);
  // 6 x 24 over 4: 36 -> 48 = lcm(16, 24), two rows each, the last rank none.
  EXPECT_EQ(shard_chunk({6, 24}, 4), 48);
  // The row of a 4-D convolution weight [out, in, kh, kw] is in * kh * kw = 2 * 3 * 3 = 18:
  // ceil(4 * 18 / 2) = 36 -> lcm(16, 18) = 144.
  EXPECT_EQ(shard_chunk({4, 2, 3, 3}, 2), 144);
  EXPECT_THROW(shard_chunk({10}, 0), std::invalid_argument);
}

TEST(ShardLayout, BucketsInReverseOrderWithOffsets) {
  std::vector<std::pair<std::string, at::Tensor>> p{{"a", at::zeros({10, 10})},  // 100 -> chunk 80 of 2 ranks
                                                    {"b", at::zeros({3})},       // 3 -> 16
                                                    {"c", at::zeros({40})}};     // 40 -> 32
  // Wire bytes: a 2*80*4 = 640, b 2*16*4 = 128, c 2*32*4 = 256. A 400-byte cap: the first bucket is
  // c and b (384), then a alone.
  const auto l = make_shard_layout(p, 2, 400);
  ASSERT_EQ(l.buckets.size(), 2u);
  EXPECT_EQ(l.buckets[0].params, (std::vector<size_t>{2, 1}));
  EXPECT_EQ(l.buckets[0].chunk, 48);
  EXPECT_EQ(l.buckets[1].params, (std::vector<size_t>{0}));
  EXPECT_EQ(l.buckets[1].shard_offset, 48);
  EXPECT_EQ(l.params[2].offset, 0);
  EXPECT_EQ(l.params[1].offset, 32);
  EXPECT_EQ(l.params[0].offset, 0);
  EXPECT_EQ(l.params[0].bucket, 1u);
  EXPECT_EQ(l.shard_numel, 128);
  EXPECT_EQ(l.numel, 143);
  EXPECT_EQ(l.padding(), 2 * 128 - 143);
  EXPECT_EQ(l.params[0].shape, (std::vector<int64_t>{10, 10}));
  EXPECT_EQ(l.params[0].begin(1), 80);  // row 8
  EXPECT_EQ(l.params[0].end(1), 100);
  EXPECT_EQ(l.params[1].begin(1), 3);  // all padding
  EXPECT_EQ(l.params[1].end(1), 3);
}

TEST(ShardLayout, ChunksOfAllRanksGiveTheTensorBack) {
  const auto t = at::arange(100, at::kFloat).reshape({10, 10});
  const auto l = make_shard_layout({{"w", t}}, 3, 1 << 20);
  const auto& p = l.params[0];
  ASSERT_EQ(p.chunk, 80);
  std::vector<at::Tensor> chunks;
  for (int r = 0; r < 3; ++r) chunks.push_back(bitqat::training::take_chunk(t, p, r));
  EXPECT_EQ(chunks[1][0].item<float>(), 80.0f);  // rank 1 starts at row 8
  EXPECT_EQ(chunks[1][19].item<float>(), 99.0f);
  EXPECT_EQ(chunks[1][20].item<float>(), 0.0f);  // padding
  EXPECT_EQ(chunks[2].abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(at::equal(bitqat::training::drop_padding(at::cat(chunks), p).view({10, 10}), t));
}

TEST(ShardLayout, BlockBucketsLastBlockFirstThenTheRest) {
  using bitqat::training::block_of;
  EXPECT_EQ(block_of("layers.12.attn.q.weight"), 12);
  EXPECT_EQ(block_of("blocks.3.ffn.up.weight"), 3);
  EXPECT_EQ(block_of("embed.weight"), -1);
  EXPECT_EQ(block_of("layers.x.weight"), -1);
  std::vector<std::pair<std::string, at::Tensor>> p{{"embed.weight", at::zeros({4})},
                                                    {"layers.0.a.weight", at::zeros({4})},
                                                    {"layers.0.b.weight", at::zeros({4})},
                                                    {"layers.1.a.weight", at::zeros({4})},
                                                    {"norm.weight", at::zeros({4})}};
  const auto b = bitqat::training::block_buckets(p);
  ASSERT_EQ(b.groups.size(), 3u);
  EXPECT_EQ(b.groups[0], (std::vector<size_t>{3}));
  EXPECT_EQ(b.groups[1], (std::vector<size_t>{1, 2}));
  EXPECT_EQ(b.groups[2], (std::vector<size_t>{0, 4}));
  EXPECT_EQ(b.bucket_of_block.at(1), 0u);
  EXPECT_EQ(b.bucket_of_block.at(0), 1u);
  EXPECT_EQ(b.rest, 2);
  EXPECT_EQ(bitqat::training::block_buckets({{"layers.0.w", at::zeros({4})}}).rest, -1);
}

}  // namespace
