// Activation checkpointing and block hooks (models/recompute.hpp): the LM's and the DiT's losses and
// every parameter gradient are bit-identical with and without recomputation (ternary weights and
// int8 activations, at lambda 1 and 0.5), the recomputed blocks leave one node each in the graph,
// the hooks run in the passes' order, and the forward's autocast state is the recomputation's.
#include "models/recompute.hpp"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/nn/modules/linear.h>

#include <string>
#include <unordered_set>
#include <vector>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"
#include "models/dit.hpp"
#include "models/factory.hpp"
#include "models/lm.hpp"

using namespace bitqat::models;
using bitqat::bitlinear::QuantSpec;

namespace {

using S = std::vector<std::string>;

const Checkpointing kNone{0}, kFull{1}, kEvery2{2};

LMConfig tiny_lm(int64_t layers = 3) {
  LMConfig c;
  c.vocab_size = 50;
  c.dim = 32;
  c.n_layers = layers;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.max_seq_len = 32;
  return c;
}

DiTConfig tiny_dit() {
  DiTConfig c;
  c.patch_size = 7;
  c.dim = 16;
  c.n_layers = 3;
  c.n_heads = 2;
  c.mlp_dim = 32;
  c.freq_dim = 16;
  c.sub_norm = true;
  return c;
}

struct Step {
  at::Tensor loss;
  std::vector<std::pair<std::string, at::Tensor>> grads;  // undefined where a parameter got none
};

Step collect(torch::nn::Module& m, const at::Tensor& loss) {
  Step s;
  s.loss = loss.detach();
  for (const auto& p : m.named_parameters()) {
    s.grads.emplace_back(p.key(), p.value().grad().defined() ? p.value().grad().clone() : at::Tensor());
  }
  return s;
}

void expect_identical(const Step& a, const Step& b, const std::string& what) {
  EXPECT_TRUE(at::equal(a.loss, b.loss)) << what << ": loss " << a.loss.item<double>() << " vs "
                                         << b.loss.item<double>();
  ASSERT_EQ(a.grads.size(), b.grads.size());
  int defined = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    const auto &ga = a.grads[i].second, &gb = b.grads[i].second;
    ASSERT_EQ(ga.defined(), gb.defined()) << what << ": " << a.grads[i].first;
    if (!ga.defined()) continue;
    ++defined;
    EXPECT_TRUE(at::equal(ga, gb)) << what << ": " << a.grads[i].first << " differs by up to "
                                   << (ga - gb).abs().max().item<double>();
  }
  EXPECT_GT(defined, 0) << what;
}

// Cross-entropy of the logits, plus with `hidden_loss` a loss on block 0's residual stream
// (forward_hidden, as distillation's hidden-state loss uses it): a gradient that enters the stream
// between blocks.
Step lm_step(BitLM& lm, const Checkpointing& c, const at::Tensor& tokens, const at::Tensor& targets,
             bool hidden_loss = false) {
  lm->zero_grad();
  lm->block_runner.checkpointing = c;
  std::vector<at::Tensor> hidden;
  const auto logits =
      lm->forward_hidden(tokens, hidden_loss ? std::vector<int64_t>{0} : std::vector<int64_t>{}, &hidden);
  auto loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  if (hidden_loss) loss = loss + 0.1 * hidden[0].square().mean();
  loss.backward();
  return collect(*lm, loss);
}

Step dit_step(BitDiT& dit, const Checkpointing& c, const at::Tensor& x, const at::Tensor& t, const at::Tensor& y,
              const at::Tensor& target) {
  dit->zero_grad();
  dit->block_runner.checkpointing = c;
  const auto loss = (dit->forward(x, t, y) - target).square().mean();
  loss.backward();
  return collect(*dit, loss);
}

// The graph's nodes reachable from `root` (parameters' AccumulateGrad nodes included), and how many
// are a recomputed block's node.
struct GraphCount {
  size_t nodes = 0, block_nodes = 0;
};
GraphCount graph_count(const at::Tensor& root) {
  GraphCount g;
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<const torch::autograd::Node*> stack = {root.grad_fn().get()};
  while (!stack.empty()) {
    const auto* n = stack.back();
    stack.pop_back();
    if (!n || !seen.insert(n).second) continue;
    ++g.nodes;
    if (n->name().find("BlockNode") != std::string::npos) ++g.block_nodes;
    for (const auto& e : n->next_edges()) stack.push_back(e.function.get());
  }
  return g;
}

}  // namespace

TEST(ActivationCheckpointing, BitLMLossAndEveryGradientAreBitIdentical) {
  at::manual_seed(11);
  BitLM lm(tiny_lm(), QuantSpec{}, S{"*"}, S{});
  const auto tokens = at::randint(0, 50, {3, 12}, at::kLong);
  const auto targets = at::randint(0, 50, {3, 12}, at::kLong);
  for (const double lambda : {1.0, 0.5}) {
    bitqat::bitlinear::set_quant_lambdas(*lm, lambda, lambda);
    for (const bool hidden_loss : {false, true}) {
      const auto base = lm_step(lm, kNone, tokens, targets, hidden_loss);
      for (const auto& c : {kFull, kEvery2}) {
        expect_identical(base, lm_step(lm, c, tokens, targets, hidden_loss),
                         fmt::format("lambda {}, {}, hidden loss {}", lambda, c.to_string(), hidden_loss));
      }
    }
  }
  // Block 1 reads a stream that the hidden-state loss reads too: it is not recomputed.
  {
    lm->block_runner.checkpointing = kFull;
    std::vector<at::Tensor> hidden;
    const auto logits = lm->forward_hidden(tokens, {0}, &hidden);
    const auto g = graph_count(logits.sum() + hidden[0].sum());
    EXPECT_EQ(g.block_nodes, 2u);
  }
  // A stream that does not require grad (a frozen embedding): the blocks' parameters still get theirs.
  lm->embed->weight.requires_grad_(false);
  const auto base = lm_step(lm, kNone, tokens, targets);
  EXPECT_TRUE(lm->blocks[0]->attn->q->weight.grad().defined());
  for (const auto& c : {kFull, kEvery2}) expect_identical(base, lm_step(lm, c, tokens, targets), "frozen embedding");
}

TEST(ActivationCheckpointing, BitDiTLossAndEveryGradientAreBitIdentical) {
  at::manual_seed(12);
  BitDiT dit(tiny_dit(), QuantSpec{}, S{"blocks.*"}, S{});
  {
    // Away from adaLN-Zero's start, where the blocks' gates are zero and most gradients vanish.
    at::NoGradGuard g;
    for (auto& p : dit->parameters()) p.normal_(0.0, 0.2);
  }
  const auto x = at::randn({4, 1, 28, 28});
  const auto t = at::rand({4});
  const auto y = at::randint(0, 11, {4}, at::kLong);
  const auto target = at::randn({4, 1, 28, 28});
  for (const double lambda : {1.0, 0.5}) {
    bitqat::bitlinear::set_quant_lambdas(*dit, lambda, lambda);
    const auto base = dit_step(dit, kNone, x, t, y, target);
    for (const auto& c : {kNone, kFull, kEvery2}) {
      expect_identical(base, dit_step(dit, c, x, t, y, target), fmt::format("lambda {}, {}", lambda, c.to_string()));
    }
  }
}

// What the memory saving rests on: a recomputed block is one node in the graph (holding only its
// inputs), where a kept block leaves its every operation's node with the tensors each one saves.
TEST(ActivationCheckpointing, ARecomputedBlockIsOneNodeOfTheGraph) {
  auto count = [](int64_t layers, const Checkpointing& c) {
    at::manual_seed(13);
    BitLM lm(tiny_lm(layers), QuantSpec{}, S{"*"}, S{});
    lm->block_runner.checkpointing = c;
    const auto tokens = at::randint(0, 50, {2, 8}, at::kLong);
    return graph_count(lm->forward(tokens).sum());
  };
  at::manual_seed(13);
  const int64_t params_per_block =
      static_cast<int64_t>(BitLM(tiny_lm(1), QuantSpec{}, S{"*"}, S{})->blocks[0]->parameters().size());
  const auto none2 = count(2, kNone), none3 = count(3, kNone);
  const auto full2 = count(2, kFull), full3 = count(3, kFull);
  EXPECT_EQ(none3.block_nodes, 0u);
  EXPECT_EQ(full3.block_nodes, 3u);
  EXPECT_EQ(count(3, kEvery2).block_nodes, 2u);  // blocks 0 and 2
  // One more block: one more node when recomputed (its parameters are reached by the nested
  // backward only); its operations' nodes and its parameters' accumulators when kept.
  EXPECT_EQ(full3.nodes - full2.nodes, 1u);
  EXPECT_GT(static_cast<int64_t>(none3.nodes - none2.nodes), params_per_block + 10);
}

namespace {

struct Recorder : BlockHooks {
  std::vector<std::string> events;
  void before_forward(size_t b) override { events.push_back(fmt::format("before_forward {}", b)); }
  void after_forward(size_t b) override { events.push_back(fmt::format("after_forward {}", b)); }
  void before_backward(size_t b) override { events.push_back(fmt::format("before_backward {}", b)); }
  void after_backward(size_t b) override { events.push_back(fmt::format("after_backward {}", b)); }
};

// Counts a parameter's post-accumulate-grad calls (the data-parallel all-reduce's trigger).
struct CountingHook : torch::autograd::PostAccumulateGradHook {
  explicit CountingHook(int* n) : n_(n) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { ++*n_; }
  int* n_;
};

}  // namespace

TEST(BlockHooks, RunInThePassesOrderAroundEveryBlock) {
  const S want = {"before_forward 0",  "after_forward 0",  "before_forward 1",  "after_forward 1",
                  "before_backward 1", "after_backward 1", "before_backward 0", "after_backward 0"};
  at::manual_seed(14);
  BitLM lm(tiny_lm(2), QuantSpec{}, S{"*"}, S{});
  const auto tokens = at::randint(0, 50, {2, 8}, at::kLong);
  const auto targets = at::randint(0, 50, {2, 8}, at::kLong);
  const auto plain = lm_step(lm, kNone, tokens, targets);
  for (const auto& c : {kNone, kFull, kEvery2}) {
    auto rec = std::make_shared<Recorder>();
    lm->block_runner.hooks = rec;
    const auto with_hooks = lm_step(lm, c, tokens, targets);
    EXPECT_EQ(rec->events, want) << c.to_string();
    expect_identical(plain, with_hooks, "hooks, " + c.to_string());  // kept or recomputed, the same numbers
  }
  // Evaluation: forward calls only.
  auto rec = std::make_shared<Recorder>();
  lm->block_runner.hooks = rec;
  lm->block_runner.checkpointing = kFull;
  {
    at::NoGradGuard g;
    lm->forward(tokens);
  }
  EXPECT_EQ(rec->events, S(want.begin(), want.begin() + 4));
  lm->block_runner.hooks = nullptr;

  // Every parameter's post-accumulate-grad hook fires once per backward, from the nested backward.
  std::vector<int> fired(lm->parameters().size(), 0);
  auto params = lm->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(params[i], std::make_unique<CountingHook>(&fired[i]));
  }
  lm_step(lm, kFull, tokens, targets);
  for (auto& p : params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  EXPECT_EQ(fired, std::vector<int>(params.size(), 1));
}

// The recomputation runs under the forward's autocast state, whichever state the backward's thread
// has: CPU autocast to bf16 here (CUDA's works alike), with the backward outside the region.
TEST(ActivationCheckpointing, RecomputesUnderTheForwardsAutocastState) {
  at::manual_seed(15);
  torch::nn::Linear lin(16, 16);
  const auto x = at::randn({4, 16}).requires_grad_();
  auto grads = [&](const Checkpointing& c, bool autocast) {
    BlockRunner runner;
    runner.checkpointing = c;
    lin->zero_grad();
    x.mutable_grad() = at::Tensor();
    at::Tensor out;
    {
      at::autocast::set_autocast_enabled(at::kCPU, autocast);
      at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
      const auto l = lin.ptr();
      out = runner.run(0, *lin, [l](const std::vector<at::Tensor>& in) { return at::relu(l->forward(in[0])); }, {x});
      at::autocast::set_autocast_enabled(at::kCPU, false);
      at::autocast::clear_cache();
    }
    EXPECT_EQ(out.scalar_type(), autocast ? at::kBFloat16 : at::kFloat);
    out.to(at::kFloat).square().sum().backward();
    return std::vector<at::Tensor>{x.grad().clone(), lin->weight.grad().clone(), lin->bias.grad().clone()};
  };
  const auto kept = grads(kNone, true), recomputed = grads(kFull, true), fp32 = grads(kNone, false);
  for (size_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(recomputed[i].scalar_type(), kept[i].scalar_type());
    EXPECT_TRUE(at::equal(recomputed[i], kept[i])) << i;
    EXPECT_FALSE(at::equal(fp32[i], kept[i])) << i << ": bf16 made no difference, so this test would show none";
  }
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
}

TEST(Checkpointing, ParsesNamesAndMappingsAndRefusesTheRest) {
  auto parse = [](const std::string& value) {
    const auto n = bitqat::core::Node::load_string("train: {activation_checkpointing: " + value + "}\n", "c.yaml");
    return Checkpointing::parse_key(n.child("train"), "activation_checkpointing");
  };
  auto error = [&](const std::string& value) {
    try {
      parse(value);
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(parse("none").every_n, 0);
  EXPECT_EQ(parse("full").every_n, 1);
  EXPECT_EQ(parse("{every_n: 3}").every_n, 3);
  EXPECT_EQ(parse("{every_n: 1}").to_string(), "full");
  EXPECT_EQ(parse("{every_n: 3}").to_string(), "every_n: 3");
  const std::string expected = "expected none, full or a mapping {every_n: N} (N an integer >= 1)";
  EXPECT_EQ(error("some"), "c.yaml:1: train.activation_checkpointing = some: " + expected);
  EXPECT_EQ(error("[2]"), "c.yaml:1: train.activation_checkpointing = [2]: " + expected);
  EXPECT_EQ(error("{}"), "c.yaml:1: train.activation_checkpointing = {}: " + expected);
  EXPECT_EQ(error("{every_n: 0}"),
            "c.yaml:1: train.activation_checkpointing.every_n = 0: expected an integer >= 1 (1: every block, as full)");
  EXPECT_EQ(error("{every_n: 1.5}"), "c.yaml:1: train.activation_checkpointing.every_n = 1.5: expected an integer");
  EXPECT_NE(error("{every_n: 2, from: 1}").find("train.activation_checkpointing.from: unknown key 'from'"),
            std::string::npos)
      << error("{every_n: 2, from: 1}");
  // Which blocks: index % N == 0.
  EXPECT_TRUE(kEvery2.recomputes(0));
  EXPECT_FALSE(kEvery2.recomputes(1));
  EXPECT_TRUE(kEvery2.recomputes(2));
  EXPECT_FALSE(kNone.recomputes(0));
  EXPECT_TRUE(kFull.recomputes(5));
}
