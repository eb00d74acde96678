#include "training/optimizer.hpp"

#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <map>

#include "core/error.hpp"

using bitqat::training::AdamW;

namespace {

// A few steps of a quadratic loss with both optimizers; ours must match LibTorch's AdamW.
void run_steps(AdamW* ours, torch::optim::AdamW* ref, at::Tensor a, at::Tensor b, int steps) {
  const auto target = at::arange(6, at::kDouble).reshape({2, 3}) / 7.0;
  for (int i = 0; i < steps; ++i) {
    for (auto* p : {&a, &b}) {
      if (p->grad().defined()) p->mutable_grad() = at::Tensor();
    }
    ((a - target).pow(2).sum() + (b * 3.0).sin().sum()).backward();
    if (ours) ours->step(0.01, 0.1);
    if (ref) ref->step();
  }
}

}  // namespace

TEST(AdamW, MatchesLibTorchAdamW) {
  at::manual_seed(3);
  auto w1 = at::randn({2, 3}, at::kDouble).requires_grad_();
  auto b1 = at::randn({3}, at::kDouble).requires_grad_();
  auto w2 = w1.detach().clone().requires_grad_();
  auto b2 = b1.detach().clone().requires_grad_();

  // Ours: "w" decays, "bias" (1-D) does not. LibTorch: two groups with the same split.
  AdamW ours({{"w", w1}, {"bias", b1}}, {0.9, 0.95, 1e-8});
  EXPECT_EQ(ours.decay_count(), 1u);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{w2},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{b2},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups);

  run_steps(&ours, nullptr, w1, b1, 7);
  run_steps(nullptr, &ref, w2, b2, 7);
  EXPECT_TRUE(at::allclose(w1, w2, 1e-12, 1e-12)) << (w1 - w2).abs().max();
  EXPECT_TRUE(at::allclose(b1, b2, 1e-12, 1e-12)) << (b1 - b2).abs().max();
  EXPECT_EQ(ours.steps_taken(), 7);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  at::manual_seed(5);
  auto w = at::randn({2, 3}, at::kDouble).requires_grad_();
  auto b = at::randn({3}, at::kDouble).requires_grad_();
  AdamW a({{"w", w}, {"bias", b}}, {});
  run_steps(&a, nullptr, w, b, 3);

  auto w2 = w.detach().clone().requires_grad_();
  auto b2 = b.detach().clone().requires_grad_();
  AdamW c({{"w", w2}, {"bias", b2}}, {});
  const auto st = a.state_tensors();
  c.load_state_tensors(std::map<std::string, at::Tensor>(st.begin(), st.end()), "test");
  EXPECT_EQ(c.steps_taken(), 3);
  run_steps(&a, nullptr, w, b, 4);
  run_steps(&c, nullptr, w2, b2, 4);
  EXPECT_TRUE(w.equal(w2));
  EXPECT_TRUE(b.equal(b2));
}

TEST(AdamW, Float32FusedUpdateFollowsTheDoublePrecisionRule) {
  // The fused float32 kernel against LibTorch's AdamW in double from the same start. Each step
  // moves a weight by at most lr (1e-2) and rounds a few float operations of size <= 4 (2^-22
  // relative each), so 7 steps stay far inside 1e-5.
  at::manual_seed(9);
  auto w = at::randn({2, 3}, at::kDouble);
  auto b = at::randn({3}, at::kDouble);
  auto wf = w.to(at::kFloat).requires_grad_();
  auto bf = b.to(at::kFloat).requires_grad_();
  auto wd = wf.detach().to(at::kDouble).requires_grad_();
  auto bd = bf.detach().to(at::kDouble).requires_grad_();
  AdamW ours({{"w", wf}, {"bias", bf}}, {0.9, 0.95, 1e-8});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{wd},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{bd},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups);
  run_steps(&ours, nullptr, wf, bf, 7);
  run_steps(nullptr, &ref, wd, bd, 7);
  EXPECT_LT((wf.detach().to(at::kDouble) - wd).abs().max().item<double>(), 1e-5);
  EXPECT_LT((bf.detach().to(at::kDouble) - bd).abs().max().item<double>(), 1e-5);
  // And it moved: each weight by up to 7 lr.
  EXPECT_GT((wd - w).abs().max().item<double>(), 1e-2);
}

TEST(AdamW, FoundInfSkipsTheUpdateAndTheStepCount) {
  at::manual_seed(6);
  auto w = at::randn({4, 3}).requires_grad_();
  auto w2 = w.detach().clone().requires_grad_();
  AdamW a({{"w", w}}, {});
  AdamW ref({{"w", w2}}, {});
  auto grad_step = [](AdamW& o, at::Tensor& p, const at::Tensor& found_inf) {
    p.mutable_grad() = at::Tensor();
    (p * p).sum().backward();
    o.step(0.01, 0.1, found_inf);
  };
  grad_step(a, w, at::Tensor());
  grad_step(ref, w2, at::Tensor());
  const auto before = w.detach().clone();
  const auto st_before = a.state_tensors();
  grad_step(a, w, at::ones({}));  // skipped on the device
  EXPECT_TRUE(w.equal(before));
  EXPECT_EQ(a.steps_taken(), 1);
  const auto st_after = a.state_tensors();
  for (size_t i = 0; i < st_before.size(); ++i) EXPECT_TRUE(st_before[i].second.equal(st_after[i].second));
  grad_step(a, w, at::zeros({}));  // taken: the same as a step without a flag
  grad_step(ref, w2, at::Tensor());
  EXPECT_TRUE(w.equal(w2));
  EXPECT_EQ(a.steps_taken(), 2);
}

TEST(AdamW, Bf16ParametersKeepFloat32StateAndTheSameRule) {
  // bf16 weights with fp32 moments take the elementwise path: after one step from m = v = 0 the
  // update is -lr * g / (|g| + eps) = -lr sign(g) (bias corrections cancel), rounded to bf16.
  auto w = at::full({1, 3}, 1.0, at::kBFloat16).requires_grad_();
  AdamW a({{"w.weight", w}}, {});
  (w * at::tensor({1.0f, -2.0f, 3.0f}).to(at::kBFloat16).view({1, 3})).sum().backward();
  a.step(0.25, 0.0);
  const auto got = w.detach().to(at::kFloat);
  EXPECT_TRUE(got.equal(at::tensor({0.75f, 1.25f, 0.75f}).view({1, 3}))) << got;
  EXPECT_EQ(a.state_tensors()[1].second.scalar_type(), at::kFloat);
}

TEST(AdamW, MissingStateIsAClearError) {
  auto w = at::zeros({2, 2}).requires_grad_();
  AdamW a({{"layers.0.w", w}}, {});
  std::map<std::string, at::Tensor> st = {{"step", at::tensor({int64_t{1}})}};
  try {
    a.load_state_tensors(st, "ck/optimizer.safetensors");
    FAIL();
  } catch (const bitqat::core::UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              "ck/optimizer.safetensors: optimizer state 'layers.0.w.exp_avg' is missing (was the checkpoint "
              "written by a different model?)");
  }
}

TEST(AdamW, NoDecayRules) {
  EXPECT_TRUE(AdamW::no_decay("layers.0.attn_norm.weight", at::zeros({4})));
  EXPECT_TRUE(AdamW::no_decay("embed.weight", at::zeros({4, 4})));
  EXPECT_TRUE(AdamW::no_decay("fc.bias", at::zeros({4})));
  EXPECT_FALSE(AdamW::no_decay("layers.0.attn.q.weight", at::zeros({4, 4})));
}
