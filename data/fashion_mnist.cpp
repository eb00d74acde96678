// Fashion-MNIST from the IDX .gz files of Debian's dataset-fashion-mnist package: epoch-wise
// shuffled training samples, the test set in order for validation.
#include <fmt/format.h>
#include <zlib.h>

#include <array>
#include <mutex>
#include <stdexcept>

#include "core/error.hpp"
#include "data/source.hpp"
#include "data/sources.hpp"

namespace bitqat::data {
namespace {

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) {
    throw core::UserError(
        fmt::format("{}: cannot open (install the dataset-fashion-mnist package; launch/setup.sh "
                    "does)",
                    path));
  }
  std::string out;
  std::array<char, 1 << 16> buf;
  int n = 0;
  while ((n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0)
    out.append(buf.data(), static_cast<size_t>(n));
  const bool bad = n < 0;
  gzclose(f);
  if (bad) throw core::UserError(fmt::format("{}: corrupt gzip stream", path));
  return out;
}

}  // namespace

at::Tensor read_idx_images(const std::string& path) {
  const auto b = gunzip(path);
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  if (b.size() < 16 || be32(p) != 2051) {
    throw core::UserError(
        fmt::format("{}: not an IDX image file (magic {}, expected 2051)", path, b.size() >= 4 ? be32(p) : 0));
  }
  const int64_t n = be32(p + 4), rows = be32(p + 8), cols = be32(p + 12);
  if (rows != 28 || cols != 28 || static_cast<int64_t>(b.size()) != 16 + n * rows * cols) {
    throw core::UserError(
        fmt::format("{}: {} images of {}x{} do not fit its {} bytes (expected 28x28)", path, n, rows, cols, b.size()));
  }
  return at::from_blob(const_cast<char*>(b.data() + 16), {n, rows, cols}, at::kByte).clone();
}

at::Tensor read_idx_labels(const std::string& path) {
  const auto b = gunzip(path);
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  if (b.size() < 8 || be32(p) != 2049) {
    throw core::UserError(
        fmt::format("{}: not an IDX label file (magic {}, expected 2049)", path, b.size() >= 4 ? be32(p) : 0));
  }
  const int64_t n = be32(p + 4);
  if (static_cast<int64_t>(b.size()) != 8 + n) {
    throw core::UserError(fmt::format("{}: {} labels do not fit its {} bytes", path, n, b.size()));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (p[8 + i] >= 10) {
      throw core::UserError(
          fmt::format("{}: label {} of sample {} is not a Fashion-MNIST class (expected 0..9)", path, p[8 + i], i));
    }
  }
  return at::from_blob(const_cast<char*>(b.data() + 8), {n}, at::kByte).to(at::kLong);
}

namespace {

class FashionMnist final : public Source {
 public:
  FashionMnist(const std::string& dir, uint64_t seed, Split split) : seed_(seed), dir_(dir) {
    if (split == Split::kAll) {
      train_x_ = read_idx_images(dir + "/train-images-idx3-ubyte.gz");
      train_y_ = read_idx_labels(dir + "/train-labels-idx1-ubyte.gz");
    } else {
      train_x_ = at::empty({0, 28, 28}, at::kByte);
      train_y_ = at::empty({0}, at::kLong);
    }
    test_x_ = read_idx_images(dir + "/t10k-images-idx3-ubyte.gz");
    test_y_ = read_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
    if (train_x_.size(0) != train_y_.size(0) || test_x_.size(0) != test_y_.size(0)) {
      throw core::UserError(fmt::format("{}: image and label counts differ", dir));
    }
  }
  DataKind kind() const override { return DataKind::kImages; }
  int64_t vocab_size() const override { return 10; }
  int64_t train_size() const override { return train_x_.size(0); }
  std::string describe() const override {
    return fmt::format("Fashion-MNIST from {} ({} train / {} test images)", dir_, train_x_.size(0), test_x_.size(0));
  }

  Batch train_batch(int64_t step, int micro, int rank, int world, int64_t b, int accum) const override {
    check_batch_args(step, micro, rank, world, b, accum);
    if (train_x_.size(0) == 0) throw std::logic_error("train_batch: this source holds only the validation split");
    const int64_t global = b * world * accum;
    const int64_t first = step * global + (static_cast<int64_t>(micro) * world + rank) * b;
    const int64_t n = train_x_.size(0);
    auto idx = at::empty({b}, at::kLong);
    auto* pi = idx.data_ptr<int64_t>();
    {
      // train_batch is const and may be called from several threads; the cached permutation is
      // shared, so the whole lookup holds the lock.
      std::lock_guard<std::mutex> lock(mu_);
      for (int64_t r = 0; r < b; ++r) {
        const int64_t g = first + r;
        pi[r] = permutation_locked(g / n)[static_cast<size_t>(g % n)];
      }
    }
    return Batch{train_x_.index_select(0, idx).unsqueeze(1).to(at::kFloat).div_(255.0), train_y_.index_select(0, idx),
                 at::arange(first, first + b, at::kLong)};
  }

  std::vector<Batch> val_batches(int64_t b, int64_t max_batches) const override {
    check_val_args(b, max_batches);
    std::vector<Batch> out;
    const int64_t n = capped_items(b, max_batches, test_x_.size(0));
    for (int64_t i = 0; i < n; i += b) {
      const int64_t m = std::min(b, n - i);
      out.push_back(Batch{test_x_.narrow(0, i, m).unsqueeze(1).to(at::kFloat).div_(255.0),
                          test_y_.narrow(0, i, m).clone(), at::arange(i, i + m, at::kLong)});
    }
    return out;
  }

 private:
  // Fisher-Yates shuffle of epoch e, from the counter-based generator (platform independent).
  const std::vector<int64_t>& permutation_locked(int64_t epoch) const {
    if (epoch != perm_epoch_) {
      const int64_t n = train_x_.size(0);
      perm_.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) perm_[static_cast<size_t>(i)] = i;
      for (int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<int64_t>(mix3(seed_, static_cast<uint64_t>(epoch), static_cast<uint64_t>(i)) %
                                            static_cast<uint64_t>(i + 1));
        std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
      }
      perm_epoch_ = epoch;
    }
    return perm_;
  }
  uint64_t seed_;
  std::string dir_;
  at::Tensor train_x_, train_y_, test_x_, test_y_;
  mutable std::mutex mu_;
  mutable std::vector<int64_t> perm_;
  mutable int64_t perm_epoch_ = -1;
};

}  // namespace

std::unique_ptr<Source> make_fashion_mnist_source(const DataConfig& cfg, uint64_t seed, Split split) {
  return std::make_unique<FashionMnist>(cfg.dir, seed, split);
}

}  // namespace bitqat::data
