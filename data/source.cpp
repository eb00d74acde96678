#include "data/source.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <stdexcept>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/sources.hpp"

namespace bitqat::data {
namespace fs = std::filesystem;

namespace {

using C = DataConfig;

// Every key of the section, declared once; kinds() says which kinds take each.
const core::Schema<DataConfig>& all_keys() {
  static const core::Schema<DataConfig> s({
      core::key("kind", &C::kind, "where the data comes from: byte-level text, llm.c token shards, Fashion-MNIST")
          .choices(kSourceKindNames),
      core::key("seq_len", &C::seq_len, "tokens per training window").range(1, 1 << 20),
      core::key("path", &C::path, "the text file (UTF-8, read as bytes)").required(),
      core::key("val_fraction", &C::val_fraction,
                "the tail of the data held out for validation (shards: when no val glob is given)")
          .range(1e-6, 0.5),
      core::key("train", &C::train, "glob of the training shards").required(),
      core::key("val", &C::val, "glob of the validation shards; empty: hold out val_fraction of the training shards"),
      core::key("vocab_size", &C::vocab_size, "the shards' vocabulary (above 65,536: uint32 shards)")
          .range(2, int64_t{1} << 31),
      core::key("dir", &C::dir, "the directory of the Fashion-MNIST idx files (train-images-idx3-ubyte.gz, ...)"),
  });
  return s;
}

const std::set<std::string>& keys_of(SourceKind k) {
  static const std::set<std::string> text = {"kind", "seq_len", "path", "val_fraction"};
  static const std::set<std::string> shards = {"kind", "seq_len", "train", "val", "vocab_size", "val_fraction"};
  static const std::set<std::string> images = {"kind", "dir"};
  return k == SourceKind::kText ? text : k == SourceKind::kShards ? shards : images;
}

// The schema of one kind: its keys of all_keys(), in their order.
const core::Schema<DataConfig>& schema_of(SourceKind k) {
  auto make = [](SourceKind kind) {
    std::vector<core::Field<DataConfig>> fields;
    for (const auto& f : all_keys().fields()) {
      if (keys_of(kind).count(f.key)) fields.push_back(f);
    }
    return core::Schema<DataConfig>(std::move(fields));
  };
  static const core::Schema<DataConfig> text = make(SourceKind::kText), shards = make(SourceKind::kShards),
                                        images = make(SourceKind::kFashionMnist);
  return k == SourceKind::kText ? text : k == SourceKind::kShards ? shards : images;
}

}  // namespace

DataConfig DataConfig::from_yaml(const core::Node& n, bool check_files) {
  DataConfig c;
  c.node = n;
  n.allow_only(all_keys().keys());
  if (n.has("kind")) all_keys().fields().front().read(n, &c);
  for (const auto& k : n.keys()) {
    if (!keys_of(c.kind).count(k)) {
      throw core::ConfigError(
          fmt::format("{}: key '{}' does not apply to data.kind = {}", n.where(k), k, to_string(c.kind)));
    }
  }
  schema_of(c.kind).parse_into(n, &c);
  if (!check_files) return c;
  if (c.kind == SourceKind::kText && !fs::is_regular_file(c.path)) {
    throw core::ConfigError(fmt::format("{}: file not found{}", n.describe("path"),
                                        c.path.find("kjv") != std::string::npos ? " (run data/prepare_kjv.sh)" : ""));
  }
  if (c.kind == SourceKind::kShards) {
    if (core::glob_files(c.train).empty()) {
      throw core::ConfigError(fmt::format("{}: matched no files", n.describe("train")));
    }
    if (!c.val.empty() && core::glob_files(c.val).empty()) {
      throw core::ConfigError(fmt::format("{}: matched no files", n.describe("val")));
    }
  }
  if (c.kind == SourceKind::kFashionMnist && !fs::exists(c.dir + "/train-images-idx3-ubyte.gz")) {
    throw core::ConfigError(
        fmt::format("{}: no train-images-idx3-ubyte.gz there (install the "
                    "dataset-fashion-mnist package; launch/setup.sh does)",
                    n.has("dir") ? n.describe("dir") : n.where("dir") + " = " + c.dir));
  }
  return c;
}

void DataConfig::write(YAML::Node out) const { schema_of(kind).write(*this, out); }

std::vector<core::KeyReference> DataConfig::reference() {
  auto rows = all_keys().reference("data.");
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto key = rows[i].key.substr(5);
    std::string kinds;
    for (const auto& e : kSourceKindNames) {
      if (keys_of(e.value).count(key)) kinds += (kinds.empty() ? "" : ", ") + std::string(e.name);
    }
    rows[i].when = "kind: " + kinds;
  }
  return rows;
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

DataKind DataConfig::data_kind() const {
  return kind == SourceKind::kFashionMnist ? DataKind::kImages : DataKind::kTokens;
}

int64_t DataConfig::vocab() const {
  if (kind == SourceKind::kText) return 256;
  if (kind == SourceKind::kShards) return vocab_size;
  return 10;
}

std::vector<int64_t> DataConfig::image_shape() const {
  if (data_kind() == DataKind::kImages) return {1, 28, 28};
  return {};
}

void DataConfig::write_absolute_paths(YAML::Node data) const {
  auto abs = [](const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); };
  if (kind == SourceKind::kText) data["path"] = abs(path);
  if (kind == SourceKind::kShards) {
    data["train"] = abs(train);
    if (!val.empty()) data["val"] = abs(val);
  }
  if (kind == SourceKind::kFashionMnist) data["dir"] = abs(dir);
}

std::unique_ptr<Source> make_source(const DataConfig& cfg, uint64_t seed, Split split) {
  if (cfg.kind == SourceKind::kText) return make_text_source(cfg, seed, split);
  if (cfg.kind == SourceKind::kShards) return make_shard_source(cfg, seed, split);
  return make_fashion_mnist_source(cfg, seed, split);
}

}  // namespace bitqat::data
