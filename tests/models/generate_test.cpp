#include "models/generate.hpp"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>

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

// The static cache's decoding step (what a GPU captures in a CUDA graph) gives the cached forward's
// logits: same quantized layers, attention over the whole buffer with the positions past pos
// masked (the masked exps are 0, so only the sums' order differs: within 1e-5). Reloading keeps the
// buffers, which a captured step reads.
TEST(Generate, StaticCacheDecodeStepEqualsTheCachedForward) {
  at::manual_seed(8);
  LMConfig c;
  c.vocab_size = 40;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.max_seq_len = 24;
  BitLM lm(c, bitqat::bitlinear::QuantSpec{}, S{"*"}, S{});
  lm->eval();
  at::NoGradGuard ng;
  KVCache cache;
  lm->forward(at::tensor(std::vector<int64_t>{3, 1, 4, 1, 5}, at::kLong).unsqueeze(0), &cache);
  StaticKVCache st;
  lm->load_static_cache(cache, 24, st);
  EXPECT_EQ(st.pos.item<int64_t>(), 5);
  const void* k0 = st.k[0].data_ptr();
  for (const int64_t tok : {9, 2, 6, 5, 3, 5, 8, 9, 7, 9}) {
    const auto t = at::tensor({tok}, at::kLong).unsqueeze(0);
    const auto want = lm->forward(t, &cache).select(1, 0);
    const auto got = lm->decode_step(t, st);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-5f * std::max(1.0f, want.abs().max().item<float>()));
  }
  EXPECT_EQ(st.pos.item<int64_t>(), cache.pos);
  lm->load_static_cache(cache, 24, st);
  EXPECT_EQ(st.k[0].data_ptr(), k0);
  EXPECT_THROW(lm->load_static_cache(cache, 10, st), std::invalid_argument);  // 15 tokens do not fit
  EXPECT_THROW(lm->load_static_cache(cache, 25, st), std::invalid_argument);  // past max_seq_len
}

// On a GPU generate decodes through the CUDA graph; greedy tokens equal the CPU's.
TEST(Generate, CudaGraphDecodingEqualsTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(6);
  LMConfig c;
  c.vocab_size = 40;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 128;
  c.max_seq_len = 32;
  BitLM lm(c, bitqat::bitlinear::QuantSpec{}, S{"*"}, S{});
  lm->eval();
  const std::vector<int64_t> prompt = {1, 5, 9, 2};
  const auto cpu = generate(*lm, prompt, 40, 0.0, 0, 0);  // runs past max_seq_len: a reload
  lm->to(at::Device(at::kCUDA, 0));
  EXPECT_EQ(generate(*lm, prompt, 40, 0.0, 0, 0), cpu);
}
