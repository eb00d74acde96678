// Language-model data: a train and a validation token stream (bytes of a text file, or llm.c shard
// tokens of either width, held as uint32), sampled as random windows of seq_len + 1 tokens.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"
#include "data/sources.hpp"

namespace bitqat::data {
namespace {

class TokenSource final : public Source {
 public:
  TokenSource(std::vector<uint32_t> train, std::vector<uint32_t> val, int64_t vocab, int64_t seq_len, uint64_t seed,
              std::string what)
      : train_(std::move(train)),
        val_(std::move(val)),
        vocab_(vocab),
        seq_len_(seq_len),
        seed_(seed),
        what_(std::move(what)) {}

  DataKind kind() const override { return DataKind::kTokens; }
  int64_t vocab_size() const override { return vocab_; }
  int64_t train_size() const override { return static_cast<int64_t>(train_.size()); }
  std::string describe() const override {
    return fmt::format("{} ({} train / {} val tokens, vocab {}, seq_len {})", what_, train_.size(), val_.size(), vocab_,
                       seq_len_);
  }

  Batch train_batch(int64_t step, int micro, int rank, int world, int64_t b, int accum) const override {
    check_batch_args(step, micro, rank, world, b, accum);
    if (train_.empty()) throw std::logic_error("train_batch: this source holds only the validation split");
    const int64_t first_row = (static_cast<int64_t>(micro) * world + rank) * b;
    const auto span = static_cast<uint64_t>(train_.size()) - static_cast<uint64_t>(seq_len_);  // windows of T+1
    auto x = at::empty({b, seq_len_ + 1}, at::kLong);
    auto* px = x.data_ptr<int64_t>();
    for (int64_t r = 0; r < b; ++r) {
      const uint64_t start = mix3(seed_, static_cast<uint64_t>(step), static_cast<uint64_t>(first_row + r)) % span;
      for (int64_t t = 0; t <= seq_len_; ++t) px[r * (seq_len_ + 1) + t] = train_[start + static_cast<uint64_t>(t)];
    }
    return Batch{x.narrow(1, 0, seq_len_).contiguous(), x.narrow(1, 1, seq_len_).contiguous(), at::Tensor()};
  }

  std::vector<Batch> val_batches(int64_t b, int64_t max_batches) const override {
    check_val_args(b, max_batches);
    const int64_t windows = capped_items(b, max_batches, (static_cast<int64_t>(val_.size()) - 1) / seq_len_);
    std::vector<Batch> out;
    for (int64_t w0 = 0; w0 < windows; w0 += b) {
      const int64_t n = std::min(b, windows - w0);
      auto x = at::empty({n, seq_len_ + 1}, at::kLong);
      auto* px = x.data_ptr<int64_t>();
      for (int64_t r = 0; r < n; ++r) {
        const size_t start = static_cast<size_t>((w0 + r) * seq_len_);
        for (int64_t t = 0; t <= seq_len_; ++t) px[r * (seq_len_ + 1) + t] = val_[start + static_cast<size_t>(t)];
      }
      out.push_back(Batch{x.narrow(1, 0, seq_len_).contiguous(), x.narrow(1, 1, seq_len_).contiguous(), at::Tensor()});
    }
    return out;
  }

 private:
  std::vector<uint32_t> train_, val_;
  int64_t vocab_, seq_len_;
  uint64_t seed_;
  std::string what_;
};

void check_length(const DataConfig& cfg, const std::string& key, const std::string& what, size_t n) {
  if (static_cast<int64_t>(n) < cfg.seq_len + 1) {
    throw core::UserError(
        fmt::format("{}: the {} split has {} tokens, fewer than data.seq_len + 1 = {}; use more "
                    "data, a smaller seq_len or another val_fraction",
                    cfg.node.describe(key), what, n, cfg.seq_len + 1));
  }
}

// The validation split of n tokens: the last floor(n * fraction).
size_t val_count(size_t n, double fraction) { return static_cast<size_t>(static_cast<double>(n) * fraction); }

std::pair<std::vector<uint32_t>, std::vector<uint32_t>> split_tail(std::vector<uint32_t> all, double fraction) {
  const auto n_val = val_count(all.size(), fraction);
  std::vector<uint32_t> val(all.end() - static_cast<std::ptrdiff_t>(n_val), all.end());
  all.resize(all.size() - n_val);
  return {std::move(all), std::move(val)};
}

void check_vocab(const DataConfig& cfg, const std::string& key, const std::string& f,
                 const std::vector<uint32_t>& toks) {
  for (size_t i = 0; i < toks.size(); ++i) {
    if (toks[i] >= cfg.vocab_size) {
      throw core::UserError(fmt::format("{}: token {} at position {} is >= data.vocab_size = {} ({})", f, toks[i], i,
                                        cfg.vocab_size, cfg.node.where(key)));
    }
  }
}

std::vector<uint32_t> read_shards(const DataConfig& cfg, const std::string& key, const std::string& pattern) {
  std::vector<uint32_t> all;
  for (const auto& f : core::glob_files(pattern)) {
    const auto toks = read_shard_tokens(f);
    check_vocab(cfg, key, f, toks);
    all.insert(all.end(), toks.begin(), toks.end());
  }
  return all;
}

// The last `count` tokens of the concatenated train shards, reading only the shards that hold them.
std::vector<uint32_t> read_shard_tail(const DataConfig& cfg, size_t count) {
  const auto files = core::glob_files(cfg.train);
  std::vector<uint32_t> tail;
  for (auto it = files.rbegin(); it != files.rend() && tail.size() < count; ++it) {
    auto toks = read_shard_tokens(*it);
    check_vocab(cfg, "train", *it, toks);
    toks.insert(toks.end(), tail.begin(), tail.end());
    tail = std::move(toks);
  }
  if (tail.size() > count) tail.erase(tail.begin(), tail.end() - static_cast<std::ptrdiff_t>(count));
  return tail;
}

std::string read_text(const DataConfig& cfg, Split split) {
  if (split == Split::kAll) return core::read_file(cfg.path);
  std::error_code ec;
  const auto size = std::filesystem::file_size(cfg.path, ec);
  if (ec) throw core::UserError(fmt::format("{}: cannot read the file: {}", cfg.node.describe("path"), ec.message()));
  const auto n_val = val_count(size, cfg.val_fraction);
  return core::read_file_range(cfg.path, size - n_val, n_val);
}

}  // namespace

std::unique_ptr<Source> make_text_source(const DataConfig& cfg, uint64_t seed, Split split) {
  const std::string bytes = read_text(cfg, split);
  std::vector<uint32_t> all(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) all[i] = static_cast<uint8_t>(bytes[i]);
  std::vector<uint32_t> train, val;
  if (split == Split::kValidation) {
    val = std::move(all);
  } else {
    std::tie(train, val) = split_tail(std::move(all), cfg.val_fraction);
    check_length(cfg, "path", "train", train.size());
  }
  check_length(cfg, "path", "validation", val.size());
  return std::make_unique<TokenSource>(std::move(train), std::move(val), 256, cfg.seq_len, seed,
                                       "bytes of " + cfg.path);
}

std::unique_ptr<Source> make_shard_source(const DataConfig& cfg, uint64_t seed, Split split) {
  std::vector<uint32_t> train, val;
  if (split == Split::kValidation) {
    if (cfg.val.empty()) {
      size_t total = 0;
      for (const auto& f : core::glob_files(cfg.train)) total += static_cast<size_t>(read_shard_count(f));
      val = read_shard_tail(cfg, val_count(total, cfg.val_fraction));
    } else {
      val = read_shards(cfg, "val", cfg.val);
    }
  } else {
    train = read_shards(cfg, "train", cfg.train);
    if (cfg.val.empty()) {
      std::tie(train, val) = split_tail(std::move(train), cfg.val_fraction);
    } else {
      val = read_shards(cfg, "val", cfg.val);
    }
    check_length(cfg, "train", "train", train.size());
  }
  check_length(cfg, cfg.val.empty() ? "train" : "val", "validation", val.size());
  return std::make_unique<TokenSource>(std::move(train), std::move(val), cfg.vocab_size, cfg.seq_len, seed,
                                       "llm.c shards " + cfg.train);
}

}  // namespace bitqat::data
