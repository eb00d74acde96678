#include "data/source.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

#include "tests/data/test_util.hpp"

using bitqat::data::testing::DataTest;
using namespace bitqat::data;

TEST_F(DataTest, ConfigDefaultsAndKinds) {
  const auto path = text_file(100);
  const auto c = cfg("data: {kind: text, path: " + path + "}");
  EXPECT_EQ(c.kind, bitqat::data::SourceKind::kText);
  EXPECT_EQ(c.seq_len, 256);
  EXPECT_DOUBLE_EQ(c.val_fraction, 0.05);
  const auto f = cfg("data: {kind: fashion_mnist}");
  EXPECT_EQ(f.dir, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(make_source(cfg("data: {kind: text, path: " + path + ", seq_len: 4}"), 0)->kind(), DataKind::kTokens);
}

TEST_F(DataTest, ConfigErrorsNameKeyValueAndExpectation) {
  EXPECT_EQ(err("data: {kind: csv}"), "d.yaml:1: data.kind = csv: expected one of fashion_mnist|shards|text");
  EXPECT_EQ(err("data: {kind: text, path: /nonexistent.txt}"),
            "d.yaml:1: data.path = /nonexistent.txt: file not found");
  EXPECT_EQ(err("data: {kind: text, path: data/cache/kjv.txt.missing}"),
            "d.yaml:1: data.path = data/cache/kjv.txt.missing: file not found (run data/prepare_kjv.sh)");
  EXPECT_EQ(err("data: {kind: text, path: x, dir: y}"),
            "d.yaml:1: data.dir: key 'dir' does not apply to data.kind = text");
  EXPECT_EQ(err("data: {kind: text, path: x, seq: 3}"),
            "d.yaml:1: data.seq: unknown key 'seq'; expected one of: dir, kind, path, seq_len, train, val, "
            "val_fraction, vocab_size");
  EXPECT_EQ(err("data:\n  kind: text\n  path: " + text_file(100) + "\n  seq_len: 0\n"),
            "d.yaml:4: data.seq_len = 0: expected a value in [1, 1048576]");
  EXPECT_EQ(err("data:\n  kind: text\n  path: " + text_file(100) + "\n  val_fraction: 0.9\n"),
            "d.yaml:4: data.val_fraction = 0.9: expected a value in [1e-06, 0.5]");
  EXPECT_EQ(err("data: {kind: shards}"), "d.yaml:1: data: required key 'data.train' is missing (a string)");
  EXPECT_EQ(err("data: {kind: shards, train: '/nonexistent/x_*.bin'}"),
            "d.yaml:1: data.train = /nonexistent/x_*.bin: matched no files");
  EXPECT_EQ(err("data: {kind: fashion_mnist, dir: /nonexistent}"),
            "d.yaml:1: data.dir = /nonexistent: no train-images-idx3-ubyte.gz there (install the "
            "dataset-fashion-mnist package; launch/setup.sh does)");
  EXPECT_EQ(err("data: {kind: fashion_mnist, seq_len: 8}"),
            "d.yaml:1: data.seq_len: key 'seq_len' does not apply to data.kind = fashion_mnist");
}

TEST(Mix3, IsSplitMix64) {
  // splitmix64's first output from state 0 is 0xE220A8397B1DCDAF (Vigna's reference); with a = b =
  // that value the two inner rounds cancel back to sm(0).
  constexpr uint64_t k = 0xE220A8397B1DCDAFull;
  EXPECT_EQ(mix3(0, k, k), k);
  EXPECT_EQ(mix3(5, 6, 7), mix3(5, 6, 7));
  EXPECT_NE(mix3(5, 6, 7), mix3(5, 7, 6));
  EXPECT_NE(mix3(5, 6, 7), mix3(4, 6, 7));
}

TEST_F(DataTest, BatchArgumentsAreChecked) {
  const auto src = make_source(cfg("data: {kind: text, path: " + text_file(200) + ", seq_len: 4}"), 0);
  EXPECT_THROW(src->train_batch(0, 0, 2, 2, 4, 1), std::invalid_argument);   // rank == world
  EXPECT_THROW(src->train_batch(0, 1, 0, 1, 4, 1), std::invalid_argument);   // micro == accum
  EXPECT_THROW(src->train_batch(0, 0, 0, 1, 0, 1), std::invalid_argument);   // empty batch
  EXPECT_THROW(src->train_batch(-1, 0, 0, 1, 4, 1), std::invalid_argument);  // negative step
  EXPECT_THROW(src->val_batches(0, 3), std::invalid_argument);
  EXPECT_EQ(src->train_batch(0, 1, 1, 2, 4, 2).inputs.size(0), 4);
  EXPECT_TRUE(src->val_batches(2, 0).empty());
}
