// The flat layout of sharded data parallelism (ZeRO, Rajbhandari et al. 2020, "ZeRO: Memory
// Optimizations Toward Training Trillion Parameter Models"; llm.c's zero.cuh shards the same way).
//
// Every trainable parameter is flattened (row-major) and split into `world` equal contiguous chunks
// of whole rows (as FSDP2 shards dim 0):
//   chunk = round_up(ceil(numel / world), lcm(kShardAlign, row)) elements,
// row = numel / shape[0] for two or more dimensions, else 1. Rank r owns elements
// [r * chunk, (r + 1) * chunk) of the flat parameter padded with zeros to world * chunk elements; the
// padding sits at the end, in the last ranks' chunks (a rank's chunk may be all padding). Whole rows
// (and so whole scale groups) let a rank compute the canonical |W| sums the absmean scale is made
// of (training/ternary_gather.hpp), which a split row could not give bit for bit. Padding elements are zero in the parameters' shards, their gradients and both
// AdamW moments, and stay zero (a zero gradient moves neither moment nor the weight).
//
// Parameters are grouped into buckets (the same rule as the all-reduce buckets: reverse
// registration order, training/grad_sync.hpp's plan_buckets, on world * chunk elements). A bucket
// travels as one collective: its wire buffer is [world, bucket_chunk] (row r = rank r's chunks of
// the bucket's parameters, in bucket order, at their `offset`), which is exactly what a
// reduce-scatter hands out and an all-gather collects. A rank's shard of everything is its rows of
// all buckets: `shard_numel` elements.
//
// The trainer allocates from this layout, and `bitqat plan` reports its bytes from it.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::training {

// Chunk sizes are multiples of 16 elements: 64-byte rows of fp32, and whole bytes (4 bytes) of
// 2-bit codes.
constexpr int64_t kShardAlign = 16;

struct ShardedParam {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t chunk = 0;     // elements per rank, padding included
  size_t bucket = 0;     // index into ShardLayout::buckets
  int64_t offset = 0;    // of this parameter's chunk in its bucket's row
  int64_t index = 0;     // of the parameter in the list the layout was made from
  // Elements of the flat parameter this rank holds (not padding): [begin, end) in the flat tensor.
  int64_t begin(int rank) const;
  int64_t end(int rank) const;
};

struct ShardBucket {
  std::vector<size_t> params;  // indices into ShardLayout::params, in bucket order
  int64_t chunk = 0;           // elements of one rank's row: sum of its parameters' chunks
  int64_t shard_offset = 0;    // of the row in the rank's shard of everything
};

struct ShardLayout {
  int world = 1;
  std::vector<ShardedParam> params;  // in the order given
  std::vector<ShardBucket> buckets;  // in collective order
  int64_t shard_numel = 0;           // elements per rank, padding included
  int64_t numel = 0;                 // elements of all parameters, no padding
  int64_t padding() const { return static_cast<int64_t>(world) * shard_numel - numel; }
};

// Elements per rank of a parameter of this shape over `world` ranks (the rule above). Throws
// std::invalid_argument for world < 1.
int64_t shard_chunk(const std::vector<int64_t>& shape, int world);

// The layout of `params` (their names and shapes; any device, the meta device included) over `world`
// ranks; buckets hold at most `bucket_bytes` of float32 wire buffer (world * chunk * 4), a larger
// parameter a bucket of its own. Throws std::invalid_argument for world < 1 or bucket_bytes < 1.
ShardLayout make_shard_layout(const std::vector<std::pair<std::string, at::Tensor>>& params, int world,
                              int64_t bucket_bytes);

// The same with the buckets given: `groups` lists indices into `params` per bucket, in collective
// order, each parameter exactly once (sharded parameters gather and release a transformer block's
// weights together). Throws std::invalid_argument when a parameter is missing or repeated.
ShardLayout make_shard_layout(const std::vector<std::pair<std::string, at::Tensor>>& params, int world,
                              const std::vector<std::vector<size_t>>& groups);

// The transformer block a parameter belongs to ("layers.3.attn.q.weight" -> 3, a DiT's "blocks.3...."),
// or -1 for the rest (embeddings, final norm, output head, ...).
int64_t block_of(const std::string& name);

// dist.shard parameters' buckets (the groups of make_shard_layout): one per transformer block, the last
// block first (the order the backward pass finishes them), then one of the rest, if any. A block's
// weights are gathered, and its gradients reduce-scattered, together; the rest is gathered for the
// whole step.
struct BlockBuckets {
  std::vector<std::vector<size_t>> groups;  // indices into the parameters, per bucket
  std::map<int64_t, size_t> bucket_of_block;
  int64_t rest = -1;  // the bucket of the rest; -1: none
};
BlockBuckets block_buckets(const std::vector<std::pair<std::string, at::Tensor>>& params);

// Rank `rank`'s chunk of a flat tensor of p.numel elements ([chunk], zeros past the end).
at::Tensor take_chunk(const at::Tensor& flat, const ShardedParam& p, int rank);
// The flat tensor [numel] from the concatenated chunks of all ranks ([world * chunk]).
at::Tensor drop_padding(const at::Tensor& gathered, const ShardedParam& p);

}  // namespace bitqat::training
