#include "models/generate.hpp"

#include <gtest/gtest.h>

using namespace bitqat::models;

namespace {

using S = std::vector<std::string>;

// Greedy decoding by recomputing the whole sequence at every step (no cache).
std::vector<int64_t> greedy_reference(BitLMImpl& lm, std::vector<int64_t> seq, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto logits = lm.forward(at::tensor(seq, at::kLong).unsqueeze(0));
    seq.push_back(logits[0][-1].argmax().item<int64_t>());
  }
  return seq;
}

}  // namespace

TEST(Generate, GreedyWithCacheEqualsRecomputationAndSamplingIsSeeded) {
  at::manual_seed(6);
  LMConfig c;
  c.vocab_size = 40;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.max_seq_len = 64;
  BitLM lm(c, bitqat::bitlinear::QuantSpec{}, S{"*"}, S{});
  lm->eval();
  const std::vector<int64_t> prompt = {1, 5, 9, 2};
  const auto got = generate(*lm, prompt, 12, 0.0, 0, 0);
  EXPECT_EQ(got, greedy_reference(*lm, prompt, 12));
  EXPECT_EQ(generate(*lm, prompt, 12, 1.0, 10, 7), generate(*lm, prompt, 12, 1.0, 10, 7));
  EXPECT_EQ(generate(*lm, prompt, 80, 1.0, 0, 3).size(), 84u);  // runs past max_seq_len
}
