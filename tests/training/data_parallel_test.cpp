// Sharded parameters (dist.shard parameters) in one process: between steps a rank holds no whole
// weight, while a block runs only it and the prefetched next one are whole, and a step gives the
// loss and gradients of the unsharded model (as shards of them).
#include "training/data_parallel.hpp"

#include <gtest/gtest.h>

#include "bitlinear/quantizers.hpp"
#include "models/factory.hpp"
#include "models/lm.hpp"
#include "models/recompute.hpp"

namespace {
using namespace bitqat;

models::LMConfig tiny_lm() {
  models::LMConfig c;
  c.vocab_size = 50;
  c.dim = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.max_seq_len = 16;
  return c;
}

// Counts, at each block's forward, which blocks' weights are whole.
class Observer final : public models::BlockHooks {
 public:
  Observer(std::shared_ptr<models::BlockHooks> inner, models::BitLM lm) : inner_(std::move(inner)), lm_(std::move(lm)) {}
  void before_forward(size_t b) override {
    inner_->before_forward(b);
    whole_at_forward.push_back(whole_blocks());
  }
  void after_forward(size_t b) override { inner_->after_forward(b); }
  void before_backward(size_t b) override {
    inner_->before_backward(b);
    whole_at_backward.push_back(whole_blocks());
  }
  void after_backward(size_t b) override { inner_->after_backward(b); }
  std::string whole_blocks() const {
    std::string s;
    for (size_t i = 0; i < lm_->blocks.size(); ++i) {
      bool whole = true;
      for (const auto& p : lm_->blocks[i]->parameters()) whole = whole && p.numel() > 0;
      s += whole ? '1' : '0';
    }
    return s;
  }
  std::vector<std::string> whole_at_forward, whole_at_backward;

 private:
  std::shared_ptr<models::BlockHooks> inner_;
  models::BitLM lm_;
};

// With the identity estimator, and with the clipped one (which the sharded step applies to the
// gradient shard from the latent chunk, since the weight the block ran with is rebuilt from codes).
class ShardedParameters : public ::testing::TestWithParam<bitlinear::Estimator> {};

TEST_P(ShardedParameters, OnlyTheRunningAndPrefetchedBlocksAreWholeAndTheStepIsTheUnshardedOne) {
  torch::manual_seed(3);
  using S = std::vector<std::string>;
  bitlinear::QuantSpec spec;
  spec.weight.estimator = GetParam();
  spec.weight.clip = 0.9;  // some weights of every layer beyond it
  models::BitLM ref(tiny_lm(), spec, S{"*"}, S{});
  models::BitLM lm(tiny_lm(), spec, S{"*"}, S{});
  {
    torch::NoGradGuard ng;
    for (size_t i = 0; i < ref->parameters().size(); ++i) lm->parameters()[i].copy_(ref->parameters()[i]);
  }
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : lm->named_parameters()) named.emplace_back(p.key(), p.value());
  training::DistContext dist(training::DistEnv{}, "auto", std::chrono::seconds(10));
  training::DistConfig cfg;
  cfg.shard = training::ShardMode::kParameters;
  auto dp = training::make_data_parallel(dist, *lm, named, cfg, training::AdamWOptions{});
  auto observer = std::make_shared<Observer>(lm->block_runner.hooks, lm);
  lm->block_runner.hooks = observer;
  EXPECT_EQ(lm->block_runner.checkpointing.every_n, 1);  // every block recomputed
  dp->broadcast_parameters();
  EXPECT_FALSE(dp->whole_on_every_rank());
  for (const auto& [name, p] : named) EXPECT_EQ(p.numel(), 0) << name << " is whole between steps";

  const auto tokens = at::randint(0, 50, {2, 16}, at::kLong);
  const auto targets = at::randint(0, 50, {2, 16}, at::kLong);
  const auto logits_loss = [&](models::BitLM& m) {
    const auto logits = m->forward(tokens);
    return at::cross_entropy_loss(logits.reshape({-1, 50}), targets.reshape({-1}));
  };
  lm->train();
  ref->train();
  dp->zero_grad();
  const auto embed_version = lm->embed->weight._version();
  dp->begin_step();
  // The gathered embedding is new data: its version moves, so a cache keyed by (version, address),
  // such as the GPU kernels' packed weights, cannot mistake it for what a reused buffer held before.
  EXPECT_GT(lm->embed->weight._version(), embed_version);
  EXPECT_EQ(lm->embed->weight.numel(), 50 * 32);
  dp->begin_micro(true);
  const auto loss = logits_loss(lm);
  loss.backward();
  dp->end_micro(true);
  dp->finish_backward();
  // Forward: block i whole, and i + 1 prefetched (whole by its own forward); backward: i whole.
  EXPECT_EQ(observer->whole_at_forward, (std::vector<std::string>{"100", "010", "001"}));
  EXPECT_EQ(observer->whole_at_backward, (std::vector<std::string>{"001", "010", "100"}));
  for (const auto& [name, p] : named) EXPECT_EQ(p.numel(), 0) << name << " is whole after the step";

  const auto ref_loss = logits_loss(ref);
  ref_loss.backward();
  // The 2-bit gathered weights quantize to the same codes and the same scales (training/ternary_gather.hpp):
  // the loss is the unsharded model's, bit for bit.
  EXPECT_EQ(loss.item<float>(), ref_loss.item<float>());
  const auto grads = dp->grads();
  ASSERT_EQ(grads.size(), named.size());
  size_t k = 0;
  for (const auto& p : ref->parameters()) {
    const auto g = grads[k++].narrow(0, 0, p.numel());
    EXPECT_TRUE(at::equal(g, p.grad().reshape({-1}))) << named[k - 1].first << ": "
                                                      << (g - p.grad().reshape({-1})).abs().max().item<float>();
  }
  if (GetParam() == bitlinear::Estimator::kClipped) {
    // The mask did zero some gradients, and the layers have their estimator back.
    const auto& q = ref->blocks[0]->attn->q->weight;
    EXPECT_GT((q.grad() == 0).sum().item<int64_t>(), 0);
    EXPECT_EQ(lm->blocks[0]->attn->q->options.quant.weight.estimator, bitlinear::Estimator::kClipped);
  }
}

INSTANTIATE_TEST_SUITE_P(Estimators, ShardedParameters,
                         ::testing::Values(bitlinear::Estimator::kIdentity, bitlinear::Estimator::kClipped));

}  // namespace
