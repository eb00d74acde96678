#include "data/source.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <stdexcept>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/sources.hpp"

namespace bitqat::data {
namespace fs = std::filesystem;

DataConfig DataConfig::from_yaml(const core::Node& n, bool check_files) {
  DataConfig c;
  c.node = n;
  n.allow_only({"kind", "seq_len", "path", "val_fraction", "train", "val", "vocab_size", "dir"});
  c.kind = n.get_choice("kind", c.kind, {"text", "shards", "fashion_mnist"});
  auto only_for = [&](const std::set<std::string>& keys, const char* kind) {
    for (const auto& k : n.keys()) {
      if (k != "kind" && !keys.count(k)) {
        throw core::ConfigError(fmt::format("{}: key '{}' does not apply to data.kind = {}", n.where(k), k, kind));
      }
    }
  };
  if (c.kind == "text") {
    only_for({"seq_len", "path", "val_fraction"}, "text");
    c.seq_len = n.get_in<int64_t>("seq_len", c.seq_len, 1, 1 << 20);
    c.path = n.require<std::string>("path");
    c.val_fraction = n.get_in<double>("val_fraction", c.val_fraction, 1e-6, 0.5);
    if (check_files && !fs::is_regular_file(c.path)) {
      throw core::ConfigError(fmt::format("{}: file not found{}", n.describe("path"),
                                          c.path.find("kjv") != std::string::npos ? " (run data/prepare_kjv.sh)" : ""));
    }
  } else if (c.kind == "shards") {
    only_for({"seq_len", "train", "val", "vocab_size", "val_fraction"}, "shards");
    c.seq_len = n.get_in<int64_t>("seq_len", c.seq_len, 1, 1 << 20);
    c.train = n.require<std::string>("train");
    c.val = n.get<std::string>("val", "");
    c.vocab_size = n.get_in<int64_t>("vocab_size", c.vocab_size, 2, int64_t{1} << 31);
    c.val_fraction = n.get_in<double>("val_fraction", c.val_fraction, 1e-6, 0.5);
    if (check_files && core::glob_files(c.train).empty()) {
      throw core::ConfigError(fmt::format("{}: matched no files", n.describe("train")));
    }
    if (check_files && !c.val.empty() && core::glob_files(c.val).empty()) {
      throw core::ConfigError(fmt::format("{}: matched no files", n.describe("val")));
    }
  } else {
    only_for({"dir"}, "fashion_mnist");
    c.dir = n.get<std::string>("dir", c.dir);
    if (check_files && !fs::exists(c.dir + "/train-images-idx3-ubyte.gz")) {
      throw core::ConfigError(
          fmt::format("{}: no train-images-idx3-ubyte.gz there (install the "
                      "dataset-fashion-mnist package; launch/setup.sh does)",
                      n.has("dir") ? n.describe("dir") : n.where("dir") + " = " + c.dir));
    }
  }
  return c;
}

uint64_t mix3(uint64_t seed, uint64_t a, uint64_t b) {
  auto sm = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  return sm(sm(sm(seed) ^ a) ^ b);
}

void check_batch_args(int64_t step, int micro, int rank, int world, int64_t batch_size, int accum) {
  if (step < 0 || batch_size < 1 || world < 1 || rank < 0 || rank >= world || accum < 1 || micro < 0 ||
      micro >= accum) {
    throw std::invalid_argument(
        fmt::format("train_batch(step={}, micro={}, rank={}, world={}, batch_size={}, "
                    "accum={}): expected step >= 0, batch_size >= 1, 0 <= rank < world, "
                    "0 <= micro < accum",
                    step, micro, rank, world, batch_size, accum));
  }
}

int64_t capped_items(int64_t batch_size, int64_t max_batches, int64_t available) {
  // batch_size * max_batches may overflow (eval --batches 9223372036854775807).
  return max_batches >= (available + batch_size - 1) / batch_size ? available : batch_size * max_batches;
}

void check_val_args(int64_t batch_size, int64_t max_batches) {
  if (batch_size < 1 || max_batches < 0) {
    throw std::invalid_argument(
        fmt::format("val_batches(batch_size={}, max_batches={}): expected batch_size >= 1 "
                    "and max_batches >= 0",
                    batch_size, max_batches));
  }
}

DataKind DataConfig::data_kind() const { return kind == "fashion_mnist" ? DataKind::kImages : DataKind::kTokens; }

int64_t DataConfig::vocab() const {
  if (kind == "text") return 256;
  if (kind == "shards") return vocab_size;
  return 10;
}

std::vector<int64_t> DataConfig::image_shape() const {
  if (data_kind() == DataKind::kImages) return {1, 28, 28};
  return {};
}

void DataConfig::write_absolute_paths(YAML::Node data) const {
  auto abs = [](const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); };
  if (kind == "text") data["path"] = abs(path);
  if (kind == "shards") {
    data["train"] = abs(train);
    if (!val.empty()) data["val"] = abs(val);
  }
  if (kind == "fashion_mnist") data["dir"] = abs(dir);
}

std::unique_ptr<Source> make_source(const DataConfig& cfg, uint64_t seed, Split split) {
  if (cfg.kind == "text") return make_text_source(cfg, seed, split);
  if (cfg.kind == "shards") return make_shard_source(cfg, seed, split);
  return make_fashion_mnist_source(cfg, seed, split);
}

}  // namespace bitqat::data
