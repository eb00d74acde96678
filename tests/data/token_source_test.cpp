#include <gtest/gtest.h>

#include <set>

#include "data/source.hpp"
#include "tests/data/test_util.hpp"

using bitqat::data::testing::DataTest;
using namespace bitqat::data;

namespace {

// The rows of `t` as strings of bytes.
std::vector<std::string> rows_of(const at::Tensor& t) {
  std::vector<std::string> out;
  for (int64_t r = 0; r < t.size(0); ++r) {
    std::string s;
    for (int64_t c = 0; c < t.size(1); ++c) s.push_back(static_cast<char>(t[r][c].item<int64_t>()));
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_F(DataTest, TextBatchesAreWindowsOfTheTrainSplitShiftedByOne) {
  const auto path = text_file(5000);
  const auto src = make_source(cfg("data: {kind: text, path: " + path + ", seq_len: 16, val_fraction: 0.1}"), 42);
  EXPECT_EQ(src->vocab_size(), 256);
  EXPECT_EQ(src->train_size(), 4500);
  EXPECT_EQ(src->describe(), "bytes of " + path + " (4500 train / 500 val tokens, vocab 256, seq_len 16)");
  const auto a = src->train_batch(3, 0, 0, 1, 8, 1);
  EXPECT_EQ(a.inputs.sizes(), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(a.targets.sizes(), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(a.inputs.scalar_type(), at::kLong);
  EXPECT_EQ(a.targets.scalar_type(), at::kLong);
  EXPECT_TRUE(a.inputs.narrow(1, 1, 15).equal(a.targets.narrow(1, 0, 15)));
  const std::string text = bitqat::core::read_file(path);
  const std::string train = text.substr(0, 4500);
  const auto in_rows = rows_of(a.inputs), tgt_rows = rows_of(a.targets);
  for (size_t r = 0; r < in_rows.size(); ++r) {
    // Every row is a window of seq_len + 1 bytes of the train split (never reaching validation).
    const auto at = train.find(in_rows[r] + tgt_rows[r].back());
    ASSERT_NE(at, std::string::npos) << r;
    EXPECT_EQ(train.substr(at + 1, 16), tgt_rows[r]);
  }
}

TEST_F(DataTest, TextBatchesArePureFunctionsOfSeedStepAndRow) {
  const auto c = cfg("data: {kind: text, path: " + text_file(5000) + ", seq_len: 16}");
  const auto src = make_source(c, 42);
  const auto a = src->train_batch(3, 0, 0, 1, 8, 1);
  // A fresh source (a resumed run) gives the same batch for the same step; other steps and seeds differ.
  EXPECT_TRUE(a.inputs.equal(make_source(c, 42)->train_batch(3, 0, 0, 1, 8, 1).inputs));
  EXPECT_FALSE(a.inputs.equal(src->train_batch(4, 0, 0, 1, 8, 1).inputs));
  EXPECT_FALSE(a.inputs.equal(make_source(c, 43)->train_batch(3, 0, 0, 1, 8, 1).inputs));
  // Asking for other steps first changes nothing (no hidden cursor).
  src->train_batch(100, 0, 0, 1, 8, 1);
  EXPECT_TRUE(a.inputs.equal(src->train_batch(3, 0, 0, 1, 8, 1).inputs));
}

TEST_F(DataTest, TheGlobalBatchIsTheSameForEveryRankAndAccumulationSplit) {
  const auto src = make_source(cfg("data: {kind: text, path: " + text_file(5000) + ", seq_len: 16}"), 7);
  const auto whole = src->train_batch(5, 0, 0, 1, 8, 1);
  struct Split {
    int world, accum;
    int64_t b;
  };
  for (const Split s : {Split{2, 2, 2}, Split{2, 1, 4}, Split{1, 4, 2}, Split{4, 1, 2}, Split{8, 1, 1}}) {
    std::vector<at::Tensor> in, tgt;
    std::set<std::string> seen;
    for (int micro = 0; micro < s.accum; ++micro) {
      for (int rank = 0; rank < s.world; ++rank) {
        const auto part = src->train_batch(5, micro, rank, s.world, s.b, s.accum);
        EXPECT_EQ(part.inputs.size(0), s.b);
        in.push_back(part.inputs);
        tgt.push_back(part.targets);
      }
    }
    // In (micro, rank) order the parts are rows [(micro*world + rank)*B, +B) of the global batch:
    // disjoint and together exactly the world=1, accum=1 batch.
    EXPECT_TRUE(at::cat(in).equal(whole.inputs)) << s.world << "x" << s.accum;
    EXPECT_TRUE(at::cat(tgt).equal(whole.targets)) << s.world << "x" << s.accum;
  }
  // Two ranks of one micro-step see different rows.
  EXPECT_FALSE(src->train_batch(5, 0, 0, 2, 4, 1).inputs.equal(src->train_batch(5, 0, 1, 2, 4, 1).inputs));
}

TEST_F(DataTest, TextValidationIsTheTailInNonOverlappingWindows) {
  const auto path = text_file(1000);
  const auto src = make_source(cfg("data: {kind: text, path: " + path + ", seq_len: 8, val_fraction: 0.1}"), 1);
  const std::string val = bitqat::core::read_file(path).substr(900);
  const auto v = src->val_batches(4, 3);
  ASSERT_EQ(v.size(), 3u);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(v[i].inputs.sizes(), (std::vector<int64_t>{4, 8}));
    const auto rows = rows_of(v[i].inputs), targets = rows_of(v[i].targets);
    for (size_t r = 0; r < rows.size(); ++r) {
      const size_t w = i * 4 + r;  // window w starts at w * seq_len
      EXPECT_EQ(rows[r], val.substr(w * 8, 8));
      EXPECT_EQ(targets[r], val.substr(w * 8 + 1, 8));
    }
  }
  EXPECT_TRUE(v[2].inputs.equal(src->val_batches(4, 3)[2].inputs));
  // 100 validation bytes hold (100 - 1) / 8 = 12 windows: 3 batches of 5, the last one short.
  const auto all = src->val_batches(5, 100);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2].inputs.size(0), 2);
}

TEST_F(DataTest, TextTooShortSaysHowLong) {
  const auto path = text_file(20);
  EXPECT_EQ(err("data: {kind: text, path: " + path + ", seq_len: 64}"),
            "d.yaml:1: data.path = " + path +
                ": the train split has 19 tokens, fewer than data.seq_len + 1 = 65; use more data, a smaller "
                "seq_len or another val_fraction");
  // 1000 bytes, 5% = 50 for validation: too few for seq_len 60.
  const auto p2 = text_file(1000, "u.txt");
  EXPECT_EQ(err("data: {kind: text, path: " + p2 + ", seq_len: 60}"),
            "d.yaml:1: data.path = " + p2 +
                ": the validation split has 50 tokens, fewer than data.seq_len + 1 = 61; use more data, a smaller "
                "seq_len or another val_fraction");
}

TEST_F(DataTest, ShardSourcesFromGlobs) {
  std::vector<uint16_t> toks(3000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint16_t>(i % 1000);
  write_shard((dir_ / "train_000.bin").string(), toks);
  write_shard((dir_ / "train_001.bin").string(), toks);
  const auto train_glob = (dir_ / "train_*.bin").string();
  const auto src =
      make_source(cfg("data: {kind: shards, train: '" + train_glob + "', vocab_size: 1000, seq_len: 32}"), 1);
  EXPECT_EQ(src->vocab_size(), 1000);
  EXPECT_EQ(src->train_size(), 5700);  // 5% of 6000 tokens held out
  const auto b = src->train_batch(0, 0, 0, 1, 4, 1);
  EXPECT_LT(b.inputs.max().item<int64_t>(), 1000);
  // The tokens count up modulo 1000, so every window continues by one.
  EXPECT_TRUE(b.targets.equal((b.inputs + 1).remainder(1000)));
  // Validation: the tail of the concatenated stream, tokens 5700.. = 700, 701, ...
  EXPECT_EQ(src->val_batches(1, 1)[0].inputs[0][0].item<int64_t>(), 700);
  // A val glob: all train tokens are for training; validation comes from its files.
  std::vector<uint16_t> v(100, 5);
  write_shard((dir_ / "val_000.bin").string(), v);
  const auto with_val = make_source(cfg("data: {kind: shards, train: '" + train_glob + "', val: '" +
                                        (dir_ / "val_*.bin").string() + "', vocab_size: 1000, seq_len: 32}"),
                                    1);
  EXPECT_EQ(with_val->train_size(), 6000);
  EXPECT_EQ(with_val->val_batches(8, 8).size(), 1u);  // (100 - 1) / 32 = 3 windows
  EXPECT_EQ(with_val->val_batches(8, 8)[0].inputs.size(0), 3);
  EXPECT_EQ(with_val->val_batches(8, 8)[0].inputs.sum().item<int64_t>(), 3 * 32 * 5);
}

TEST_F(DataTest, ShardTokenBeyondTheVocabularyNamesFileAndOffset) {
  std::vector<uint16_t> toks(3000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint16_t>(i % 1000);
  const auto s0 = (dir_ / "a.bin").string();
  write_shard(s0, toks);
  EXPECT_EQ(err("data: {kind: shards, train: '" + s0 + "', vocab_size: 500}"),
            s0 + ": token 500 at position 500 is >= data.vocab_size = 500 (d.yaml:1: data.train)");
  EXPECT_EQ(err("data: {kind: shards, train: '" + s0 + "', val: '/nonexistent/v*.bin'}"),
            "d.yaml:1: data.val = /nonexistent/v*.bin: matched no files");
}
