#include <gtest/gtest.h>
#include <zlib.h>

#include "data/source.hpp"
#include "data/sources.hpp"
#include "tests/data/test_util.hpp"

using bitqat::data::testing::DataTest;
using namespace bitqat::data;

namespace {

const std::string kDir = "/usr/share/datasets/fashion-mnist";

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

}  // namespace

TEST(FashionMnistFiles, TheRealIdxFiles) {
  const auto labels = read_idx_labels(kDir + "/train-labels-idx1-ubyte.gz");
  ASSERT_EQ(labels.sizes(), (std::vector<int64_t>{60000}));
  EXPECT_EQ(labels[0].item<int64_t>(), 9);  // the first training image is an ankle boot
  EXPECT_EQ(labels[1].item<int64_t>(), 0);  // then a T-shirt/top
  EXPECT_EQ(labels.min().item<int64_t>(), 0);
  EXPECT_EQ(labels.max().item<int64_t>(), 9);
  const auto images = read_idx_images(kDir + "/t10k-images-idx3-ubyte.gz");
  EXPECT_EQ(images.sizes(), (std::vector<int64_t>{10000, 28, 28}));
  EXPECT_EQ(images.scalar_type(), at::kByte);
  EXPECT_EQ(images.max().item<int64_t>(), 255);
}

TEST_F(DataTest, IdxErrorsNameFileAndValues) {
  const auto p = (dir_ / "x.gz").string();
  auto error_of = [&](const std::string& bytes, bool images) -> std::string {
    write_gz(p, bytes);
    try {
      images ? read_idx_images(p) : read_idx_labels(p);
    } catch (const bitqat::core::UserError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_of(be32(2049) + be32(1) + be32(28) + be32(28) + std::string(784, '\0'), true),
            p + ": not an IDX image file (magic 2049, expected 2051)");
  EXPECT_EQ(error_of(be32(2051) + be32(1) + be32(28) + be32(27) + std::string(756, '\0'), true),
            p + ": 1 images of 28x27 do not fit its 772 bytes (expected 28x28)");
  EXPECT_EQ(error_of(be32(2051) + be32(2) + be32(28) + be32(28) + std::string(784, '\0'), true),
            p + ": 2 images of 28x28 do not fit its 800 bytes (expected 28x28)");
  EXPECT_EQ(error_of(be32(2051) + be32(1) + be32(3), false), p + ": not an IDX label file (magic 2051, expected 2049)");
  EXPECT_EQ(error_of(be32(2049) + be32(3) + "ab", false), p + ": 3 labels do not fit its 10 bytes");
  // A label byte of 10 or more is no Fashion-MNIST class (it would index past the 10 logits).
  EXPECT_EQ(error_of(be32(2049) + be32(3) + std::string("\x07\x0a\x02", 3), false),
            p + ": label 10 of sample 1 is not a Fashion-MNIST class (expected 0..9)");
  EXPECT_EQ(error_of(be32(2049) + be32(1) + std::string("\xff", 1), false),
            p + ": label 255 of sample 0 is not a Fashion-MNIST class (expected 0..9)");
  // A well-formed pair of tiny files reads back.
  write_gz(p, be32(2049) + be32(3) + std::string("\x07\x00\x02", 3));
  EXPECT_EQ(read_idx_labels(p).sum().item<int64_t>(), 9);
  const auto missing = (dir_ / "none.gz").string();
  try {
    read_idx_labels(missing);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              missing + ": cannot open (install the dataset-fashion-mnist package; launch/setup.sh does)");
  }
}

TEST_F(DataTest, FashionMnistBatches) {
  const auto src = make_source(cfg("data: {kind: fashion_mnist}"), 3);
  EXPECT_EQ(src->kind(), DataKind::kImages);
  EXPECT_EQ(src->train_size(), 60000);
  EXPECT_EQ(src->vocab_size(), 10);
  const auto b = src->train_batch(0, 0, 0, 1, 16, 1);
  EXPECT_EQ(b.inputs.sizes(), (std::vector<int64_t>{16, 1, 28, 28}));
  EXPECT_EQ(b.inputs.scalar_type(), at::kFloat);
  EXPECT_EQ(b.targets.sizes(), (std::vector<int64_t>{16}));
  EXPECT_EQ(b.targets.scalar_type(), at::kLong);
  EXPECT_GE(b.inputs.min().item<float>(), 0.0f);
  EXPECT_LE(b.inputs.max().item<float>(), 1.0f);
  EXPECT_GT(b.inputs.max().item<float>(), 0.5f);  // real images, not blanks
  // Deterministic, and the global batch is the same for any split with the same B*world*accum.
  EXPECT_TRUE(
      b.inputs.equal(make_source(cfg("data: {kind: fashion_mnist}"), 3)->train_batch(0, 0, 0, 1, 16, 1).inputs));
  std::vector<at::Tensor> parts;
  for (int micro = 0; micro < 2; ++micro) {
    for (int rank = 0; rank < 2; ++rank) parts.push_back(src->train_batch(0, micro, rank, 2, 4, 2).targets);
  }
  EXPECT_TRUE(at::cat(parts).equal(b.targets));
  // The test set in order: the first test image is an ankle boot (9), the second a pullover (2).
  const auto val = src->val_batches(100, 2);
  ASSERT_EQ(val.size(), 2u);
  EXPECT_EQ(val[0].inputs.sizes(), (std::vector<int64_t>{100, 1, 28, 28}));
  EXPECT_EQ(val[0].targets[0].item<int64_t>(), 9);
  EXPECT_EQ(val[0].targets[1].item<int64_t>(), 2);
  EXPECT_EQ(src->val_batches(4096, 100).size(), 3u);  // 10000 test images: 4096 + 4096 + 1808
}

TEST_F(DataTest, FashionMnistEpochsArePermutations) {
  const auto src = make_source(cfg("data: {kind: fashion_mnist}"), 3);
  // Steps of 20000 samples: step 0..2 are epoch 0, step 3..5 epoch 1. Each epoch holds every image
  // once (6000 per class) in a different order.
  std::vector<at::Tensor> e0, e1;
  for (int64_t s = 0; s < 3; ++s) e0.push_back(src->train_batch(s, 0, 0, 1, 20000, 1).targets);
  for (int64_t s = 3; s < 6; ++s) e1.push_back(src->train_batch(s, 0, 0, 1, 20000, 1).targets);
  const auto t0 = at::cat(e0), t1 = at::cat(e1);
  EXPECT_TRUE(at::bincount(t0).eq(6000).all().item<bool>());
  EXPECT_TRUE(at::bincount(t1).eq(6000).all().item<bool>());
  EXPECT_FALSE(t0.equal(t1));
  // A batch that straddles the epoch boundary: step 8571 of 7 samples holds 59997..60003.
  const auto straddle = src->train_batch(8571, 0, 0, 1, 7, 1).targets;
  EXPECT_TRUE(straddle.narrow(0, 0, 3).equal(t0.narrow(0, 59997, 3)));
  EXPECT_TRUE(straddle.narrow(0, 3, 4).equal(t1.narrow(0, 0, 4)));
}
