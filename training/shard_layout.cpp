#include "training/shard_layout.hpp"

#include <algorithm>
#include <functional>
#include <numeric>
#include <regex>
#include <stdexcept>

#include "training/grad_sync.hpp"

namespace bitqat::training {

int64_t ShardedParam::begin(int rank) const { return std::min(numel, rank * chunk); }
int64_t ShardedParam::end(int rank) const { return std::min(numel, (rank + 1) * chunk); }

int64_t shard_chunk(const std::vector<int64_t>& shape, int world) {
  if (world < 1) throw std::invalid_argument("shard_chunk: world < 1");
  int64_t numel = 1;
  for (const int64_t d : shape) numel *= d;
  const int64_t row = shape.size() >= 2 && shape[0] > 0 ? numel / shape[0] : 1;
  const int64_t align = row > 0 ? std::lcm(kShardAlign, row) : kShardAlign;
  const int64_t per = (numel + world - 1) / world;
  return (per + align - 1) / align * align;
}

namespace {

// Parameters and their chunks, no buckets yet.
ShardLayout layout_params(const std::vector<std::pair<std::string, at::Tensor>>& params, int world) {
  if (world < 1) throw std::invalid_argument("make_shard_layout: world < 1");
  ShardLayout l;
  l.world = world;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, t] = params[i];
    ShardedParam p;
    p.name = name;
    p.shape = t.sizes().vec();
    p.numel = t.numel();
    p.chunk = shard_chunk(p.shape, world);
    p.index = static_cast<int64_t>(i);
    l.numel += p.numel;
    l.params.push_back(std::move(p));
  }
  return l;
}

void add_buckets(ShardLayout& l, const std::vector<std::vector<size_t>>& groups) {
  std::vector<int> seen(l.params.size(), 0);
  for (const auto& idx : groups) {
    ShardBucket b;
    b.shard_offset = l.shard_numel;
    for (const size_t k : idx) {
      if (k >= l.params.size() || seen[k]++) {
        throw std::invalid_argument("make_shard_layout: a parameter index is out of range or repeated");
      }
      auto& p = l.params[k];
      p.bucket = l.buckets.size();
      p.offset = b.chunk;
      b.chunk += p.chunk;
      b.params.push_back(k);
    }
    l.shard_numel += b.chunk;
    l.buckets.push_back(std::move(b));
  }
  for (const int n : seen) {
    if (n == 0) throw std::invalid_argument("make_shard_layout: a parameter is in no bucket");
  }
}

}  // namespace

int64_t block_of(const std::string& name) {
  static const std::regex re("^(layers|blocks)\\.([0-9]+)\\..*");
  std::smatch m;
  return std::regex_match(name, m, re) ? std::stoll(m[2].str()) : -1;
}

BlockBuckets block_buckets(const std::vector<std::pair<std::string, at::Tensor>>& params) {
  std::map<int64_t, std::vector<size_t>, std::greater<>> blocks;
  std::vector<size_t> rest;
  for (size_t k = 0; k < params.size(); ++k) {
    const int64_t b = block_of(params[k].first);
    if (b < 0) {
      rest.push_back(k);
    } else {
      blocks[b].push_back(k);
    }
  }
  BlockBuckets out;
  for (auto& [b, idx] : blocks) {
    out.bucket_of_block[b] = out.groups.size();
    out.groups.push_back(std::move(idx));
  }
  if (!rest.empty()) {
    out.rest = static_cast<int64_t>(out.groups.size());
    out.groups.push_back(std::move(rest));
  }
  return out;
}

ShardLayout make_shard_layout(const std::vector<std::pair<std::string, at::Tensor>>& params, int world,
                              int64_t bucket_bytes) {
  if (bucket_bytes < 1) throw std::invalid_argument("make_shard_layout: bucket_bytes < 1");
  ShardLayout l = layout_params(params, world);
  // Buckets by their float32 wire size (world * chunk elements): a stand-in tensor per parameter.
  std::vector<at::Tensor> wire;
  for (const auto& p : l.params) {
    wire.push_back(at::empty({p.chunk * world}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta)));
  }
  add_buckets(l, plan_buckets(wire, bucket_bytes));
  return l;
}

ShardLayout make_shard_layout(const std::vector<std::pair<std::string, at::Tensor>>& params, int world,
                              const std::vector<std::vector<size_t>>& groups) {
  ShardLayout l = layout_params(params, world);
  add_buckets(l, groups);
  return l;
}

at::Tensor take_chunk(const at::Tensor& flat, const ShardedParam& p, int rank) {
  at::Tensor out = at::zeros({p.chunk}, flat.options());
  const int64_t b = p.begin(rank), e = p.end(rank);
  if (e > b) out.narrow(0, 0, e - b).copy_(flat.reshape({-1}).narrow(0, b, e - b));
  return out;
}

at::Tensor drop_padding(const at::Tensor& gathered, const ShardedParam& p) {
  return gathered.reshape({-1}).narrow(0, 0, p.numel);
}

}  // namespace bitqat::training
