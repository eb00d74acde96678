// Distillation: the loss against a hand computation and finite differences in double precision;
// whole tiny runs for what the issue asks (alpha = 1 is plain training, a student identical to its
// teacher has KL 0, gradient accumulation, exact resume with the teacher re-read and its
// fingerprint checked) and the config errors.
#include "training/distill.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "tests/training/tiny_runs.hpp"
#include "training/distributed.hpp"
#include "training/task.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using bitqat::testing::error_of;
using bitqat::training::Config;
using bitqat::training::distill_loss;
using bitqat::training::TrainOptions;

namespace {

// CE, KL and the total by the definitions, one token at a time in double precision.
void by_hand(const at::Tensor& zs, const at::Tensor& zt, const at::Tensor& y, double alpha, double temp, double* ce,
             double* kd, double* total) {
  const int64_t n = zs.size(0), v = zs.size(1);
  *ce = 0, *kd = 0;
  for (int64_t i = 0; i < n; ++i) {
    double zmax = -1e300, ss = 0, st = 0, ss1 = 0;
    for (int64_t j = 0; j < v; ++j) zmax = std::max(zmax, zs[i][j].item<double>());
    for (int64_t j = 0; j < v; ++j) ss1 += std::exp(zs[i][j].item<double>() - zmax);
    *ce += -(zs[i][y[i].item<int64_t>()].item<double>() - zmax - std::log(ss1));
    for (int64_t j = 0; j < v; ++j) {
      ss += std::exp(zs[i][j].item<double>() / temp);
      st += std::exp(zt[i][j].item<double>() / temp);
    }
    for (int64_t j = 0; j < v; ++j) {
      const double pt = std::exp(zt[i][j].item<double>() / temp) / st;
      const double ps = std::exp(zs[i][j].item<double>() / temp) / ss;
      *kd += pt * std::log(pt / ps);
    }
  }
  *ce /= static_cast<double>(n);
  *kd /= static_cast<double>(n);
  *total = alpha * *ce + (1 - alpha) * temp * temp * *kd;
}

class DistillRunTest : public bitqat::testing::TinyRunTest {
 protected:
  // The full-precision teacher run (runs/fp), trained once per test.
  std::string teacher(int steps = 20) {
    bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, steps), "fp.yaml"));
    return runs() + "/fp";
  }
  Config finetune(const std::string& init_from, int steps, std::vector<std::string> sets) {
    sets.push_back("train.log_every=1");
    return Config::load_string(bitqat::testing::tiny_finetune_yaml(runs(), text_, init_from, steps, 4), "ft.yaml",
                               sets);
  }
  std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> out;
    std::ifstream in(runs() + "/" + run + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss") && j["loss"].is_number()) out.push_back(j);
    }
    return out;
  }
  bitqat::checkpoints::CheckpointData last_checkpoint(const std::string& run) {
    return bitqat::checkpoints::read_checkpoint(
        *bitqat::checkpoints::find_latest_checkpoint(runs() + "/" + run + "/checkpoints"));
  }
  void expect_same_weights(const std::string& a, const std::string& b) {
    const auto ca = last_checkpoint(a), cb = last_checkpoint(b);
    ASSERT_EQ(ca.model.size(), cb.model.size());
    for (size_t i = 0; i < ca.model.size(); ++i) {
      EXPECT_EQ(ca.model[i].first, cb.model[i].first);
      EXPECT_TRUE(ca.model[i].second.equal(cb.model[i].second)) << ca.model[i].first;
    }
  }
};

}  // namespace

TEST(DistillLoss, EqualsTheDefinitionsComputedByHand) {
  at::manual_seed(3);
  const auto zs = at::randn({5, 7}, at::kDouble) * 2;
  const auto zt = at::randn({5, 7}, at::kDouble) * 2;
  const auto y = at::randint(0, 7, {5}, at::kLong);
  for (double temp : {1.0, 2.5}) {
    const auto eye = at::eye(7, at::kDouble);  // heads that pass features through: logits = zs, zt
    const auto l = distill_loss(zs, eye, zt, eye, y, 0.3, temp);
    double ce, kd, total;
    by_hand(zs, zt, y, 0.3, temp, &ce, &kd, &total);
    EXPECT_NEAR(l.ce.item<double>(), ce, 1e-12);
    EXPECT_NEAR(l.kd.item<double>(), kd, 1e-12);
    EXPECT_NEAR(l.total.item<double>(), total, 1e-12);
    EXPECT_GT(kd, 0.01);
    EXPECT_FALSE(l.hidden.defined());
  }
  // Identical logits: KL is exactly 0 (the same log-softmax on both sides), the total is alpha * CE.
  const auto eye = at::eye(7, at::kDouble);
  const auto same = distill_loss(zs, eye, zs.clone(), eye, y, 0.3, 2.0);
  EXPECT_EQ(same.kd.item<double>(), 0.0);
  EXPECT_EQ(same.total.item<double>(), 0.3 * same.ce.item<double>());
}

// A tiny two-layer model in double: logits = W2 tanh(W1 x), the hidden state tanh(W1 x) matched to a
// target. Central differences with step h have error O(h^2 f''') ~ 1e-10 at h = 1e-5; the gradients
// are O(0.1), so 1e-7 absolute is a bound with a wide margin that a wrong term (a missing T^2, the
// KL's direction, the hidden weight) would break by orders of magnitude.
TEST(DistillLoss, GradientsMatchFiniteDifferencesInDouble) {
  at::manual_seed(5);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto w1 = at::randn({6, 4}, opts).requires_grad_(true);
  auto w2 = at::randn({9, 6}, opts).requires_grad_(true);
  const auto x = at::randn({8, 4}, opts);
  const auto y = at::randint(0, 9, {8}, at::kLong);
  const auto zt = at::randn({8, 9}, opts);
  const auto ht = at::randn({8, 6}, opts) * 0.5;
  auto f = [&](const at::Tensor& a, const at::Tensor& b) {
    const auto h = at::tanh(at::matmul(x, a.t()));
    return distill_loss(h, b, zt, at::eye(9, opts), y, 0.3, 2.0, {h}, {ht}, 0.7, /*chunk_tokens=*/3).total;
  };
  f(w1, w2).backward();
  const double h = 1e-5;
  at::NoGradGuard no_grad;
  for (auto* p : {&w1, &w2}) {
    const auto g = p->grad();
    auto flat = p->view({-1});
    double worst = 0;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double keep = flat[i].item<double>();
      flat[i] = keep + h;
      const double up = f(w1, w2).item<double>();
      flat[i] = keep - h;
      const double down = f(w1, w2).item<double>();
      flat[i] = keep;
      worst = std::max(worst, std::abs((up - down) / (2 * h) - g.view({-1})[i].item<double>()));
    }
    EXPECT_LT(worst, 1e-7);
    EXPECT_GT(g.abs().max().item<double>(), 1e-2);
  }
}

// MiniLM-v2's relation KL by hand, in loops over (relation, batch, head, row, column): the causal
// softmax of scaled dot products between positions, the teacher's distribution against the student's.
double relation_kl_by_hand(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& xt, int64_t heads) {
  double total = 0;
  for (size_t r = 0; r < xs.size(); ++r) {
    const auto a = xs[r].accessor<double, 3>(), b = xt[r].accessor<double, 3>();
    const int64_t B = xs[r].size(0), T = xs[r].size(1), ds = xs[r].size(2) / heads, dt = xt[r].size(2) / heads;
    double sum = 0;
    for (int64_t n = 0; n < B; ++n) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> ss, st;
          for (int64_t u = 0; u <= t; ++u) {
            double dot_s = 0, dot_t = 0;
            for (int64_t k = 0; k < ds; ++k) dot_s += a[n][t][h * ds + k] * a[n][u][h * ds + k];
            for (int64_t k = 0; k < dt; ++k) dot_t += b[n][t][h * dt + k] * b[n][u][h * dt + k];
            ss.push_back(std::exp(dot_s / std::sqrt(static_cast<double>(ds))));
            st.push_back(std::exp(dot_t / std::sqrt(static_cast<double>(dt))));
          }
          double zs = 0, zt = 0;
          for (size_t u = 0; u < ss.size(); ++u) zs += ss[u], zt += st[u];
          for (size_t u = 0; u < ss.size(); ++u) {
            const double ps = ss[u] / zs, pt = st[u] / zt;
            sum += pt * std::log(pt / ps);
          }
        }
      }
    }
    total += sum / static_cast<double>(B * heads * T);
  }
  return total / static_cast<double>(xs.size());
}

// Two relations (say q with 8 features and k with 4, as grouped-query attention has), 2 and 4 relation
// heads, a teacher twice as wide as the student (MiniLM-v2 matches relations, not features).
TEST(AttentionRelationLoss, EqualsTheDefinitionComputedByHand) {
  at::manual_seed(4);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const std::vector<at::Tensor> xs{at::randn({2, 5, 8}, opts), at::randn({2, 5, 4}, opts)};
  const std::vector<at::Tensor> xt{at::randn({2, 5, 16}, opts), at::randn({2, 5, 8}, opts)};
  for (const int64_t heads : {int64_t{2}, int64_t{4}}) {
    const double got = bitqat::training::attention_relation_loss(xs, xt, heads).item<double>();
    const double want = relation_kl_by_hand(xs, xt, heads);
    EXPECT_NEAR(got, want, 1e-12) << "heads " << heads;
    EXPECT_GT(want, 0.05);
  }
  // Identical projections: exactly 0.
  EXPECT_EQ(bitqat::training::attention_relation_loss(xs, {xs[0].clone(), xs[1].clone()}, 2).item<double>(), 0.0);
  EXPECT_THROW(bitqat::training::attention_relation_loss(xs, xt, 3), c10::Error);  // 8 features, 3 heads
}

// Central differences in double, as for distill_loss above: step 1e-5, error O(h^2) ~ 1e-10 against
// gradients of order 0.1.
TEST(AttentionRelationLoss, GradientMatchesFiniteDifferencesInDouble) {
  at::manual_seed(6);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = at::randn({2, 4, 6}, opts).requires_grad_(true);
  const auto xt = at::randn({2, 4, 6}, opts);
  auto f = [&]() { return bitqat::training::attention_relation_loss({x}, {xt}, 3); };
  f().backward();
  const auto g = x.grad().clone();
  const double h = 1e-5;
  at::NoGradGuard no_grad;
  auto flat = x.view({-1});
  double worst = 0;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double keep = flat[i].item<double>();
    flat[i] = keep + h;
    const double up = f().item<double>();
    flat[i] = keep - h;
    const double down = f().item<double>();
    flat[i] = keep;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - g.view({-1})[i].item<double>()));
  }
  EXPECT_LT(worst, 1e-7);
  EXPECT_GT(g.abs().max().item<double>(), 1e-2);
}

// alpha = 1 keeps only the cross-entropy: the run is the plain fine-tune's, weight for weight (the
// KL term's gradient is multiplied by 0 exactly). The teacher still runs, so loss_kd is logged.
TEST_F(DistillRunTest, AlphaOneIsPlainTraining) {
  const auto src = teacher();
  bitqat::training::train(finetune(src, 6, {"run.name=plain"}));
  bitqat::training::train(finetune(src, 6, {"run.name=alpha1", "distill.alpha=1.0", "distill.temperature=2.0"}));
  const auto a = metrics("plain"), b = metrics("alpha1");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(b[i]["loss"].get<double>(), b[i]["loss_ce"].get<double>()) << "step " << i + 1;
    EXPECT_FALSE(a[i].contains("loss_kd"));
    EXPECT_TRUE(b[i]["loss_kd"].is_number());
  }
  expect_same_weights("plain", "alpha1");
}

// Step 1 runs at lambda 0 (the ramp starts there), so the student computes its teacher's function
// exactly: KL = 0 and so is the hidden-state error. Quantization then moves it away.
// A student with SubLN over a teacher without it (BitDistill's first stage, interop/init_source.hpp):
// the student takes the teacher's tensors, and its 2 x 2 new norms start at ones.
TEST_F(DistillRunTest, SubLnIsInsertedOverATeacherWithoutIt) {
  bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, 2), "fp.yaml",
                                              {"model.sub_norm=false"}));
  const auto cfg = finetune(runs() + "/fp", 2, {"run.name=subln", "distill.alpha=0.5"});
  ASSERT_TRUE(cfg.model.lm.sub_norm);
  bitqat::training::DistContext dist(bitqat::training::DistEnv{}, "auto", std::chrono::seconds(10));
  auto task = bitqat::training::make_distill_task(bitqat::training::make_task(cfg, at::Device(at::kCPU)), cfg,
                                                  at::Device(at::kCPU), dist);
  ASSERT_TRUE(bitqat::training::init_student_from_teacher(*task, cfg));
  const auto params = task->module().named_parameters(true);
  const auto teacher = last_checkpoint("fp").model;
  for (const auto& [name, t] : teacher) EXPECT_TRUE(params[name].equal(t)) << name;
  EXPECT_EQ(params.size(), teacher.size() + 4);
  for (const char* name : {"layers.0.attn.o.norm.weight", "layers.1.ffn.down.norm.weight"}) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_TRUE(params[name].eq(1.0f).all().item<bool>()) << name;
  }
  // And the run trains.
  const auto r = bitqat::training::train(cfg);
  EXPECT_EQ(r.final_step, 2);
  EXPECT_TRUE(std::isfinite(r.last_loss));
}

// A student with learned scales copies the teacher's weights and sets each scale to the absmean of
// its row; at lambda 0 it is the teacher (KL 0), and it trains.
TEST_F(DistillRunTest, LearnedScalesStartAtTheTeachersAbsmean) {
  const auto src = teacher();
  const auto cfg = finetune(src, 3, {"run.name=kd_learned", "distill.alpha=0.5", "train.log_every=1",
                                     "quant.weight.granularity=per_channel", "quant.weight.scale=learned"});
  bitqat::training::DistContext dist(bitqat::training::DistEnv{}, "auto", std::chrono::seconds(10));
  auto task = bitqat::training::make_distill_task(bitqat::training::make_task(cfg, at::Device(at::kCPU)), cfg,
                                                  at::Device(at::kCPU), dist);
  ASSERT_TRUE(bitqat::training::init_student_from_teacher(*task, cfg));
  const auto scales = bitqat::bitlinear::learned_scales(task->module());
  ASSERT_FALSE(scales.empty());
  for (const auto& [name, l] : scales) {
    const auto want = l->weight.detach().to(at::kDouble).abs().mean(1).to(at::kFloat);
    EXPECT_TRUE(l->weight_scale.detach().allclose(want, 1e-6, 0)) << name;
  }
  const auto r = bitqat::training::train(cfg);
  EXPECT_EQ(r.final_step, 3);
  const auto m = metrics("kd_learned");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0]["loss_kd"].get<double>(), 0.0);
  EXPECT_TRUE(std::isfinite(r.last_loss));
}

TEST_F(DistillRunTest, AStudentIdenticalToItsTeacherHasKlZero) {
  const auto src = teacher();
  const auto r = bitqat::training::train(
      finetune(src, 4, {"run.name=kd", "distill.alpha=0.5", "distill.hidden={layers: [0, 1], weight: 2.0}",
                        "distill.attention={layer: 1, weight: 3.0, relations: [q, k, v], heads: 2}"}));
  EXPECT_EQ(r.final_step, 4);
  const auto m = metrics("kd");
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0]["loss_kd"].get<double>(), 0.0);
  EXPECT_EQ(m[0]["loss_hidden"].get<double>(), 0.0);
  EXPECT_EQ(m[0]["loss_attn"].get<double>(), 0.0);
  EXPECT_NEAR(m[0]["loss"].get<double>(), 0.5 * m[0]["loss_ce"].get<double>(), 1e-12);
  EXPECT_GT(m[3]["loss_kd"].get<double>(), 1e-6);
  EXPECT_GT(m[3]["loss_hidden"].get<double>(), 1e-9);
  EXPECT_GT(m[3]["loss_attn"].get<double>(), 1e-9);
  // The total is the sum of its weighted parts (the logged parts are rounded to their printed digits).
  const auto& l = m[3];
  EXPECT_NEAR(l["loss"].get<double>(),
              0.5 * l["loss_ce"].get<double>() + 0.5 * l["loss_kd"].get<double>() +
                  2.0 * l["loss_hidden"].get<double>() + 3.0 * l["loss_attn"].get<double>(),
              1e-5);
  // The checkpoint records the teacher and its fingerprint; the teacher's tensors are not in it.
  const auto ck = last_checkpoint("kd");
  EXPECT_TRUE(ck.state["distill"]["teacher_fingerprint"].is_number_integer());
  EXPECT_EQ(ck.state["distill"]["teacher"], fs::absolute(src).lexically_normal().string());
}

// The same global batch as 1 x 8 and 2 micro-batches x 4: the loss parts are means over the same
// tokens, so the curves agree to float rounding of sums in another order (measured ~1e-7).
TEST_F(DistillRunTest, GradientAccumulationFollowsTheSameCurve) {
  const auto src = teacher();
  const std::string attention = "distill.attention={layer: 0, relations: [q, v]}";
  bitqat::training::train(finetune(src, 5, {"run.name=b8", "distill.alpha=0.4", attention}));
  bitqat::training::train(finetune(
      src, 5, {"run.name=b4x2", "distill.alpha=0.4", "train.batch_size=4", "train.grad_accum=2", attention}));
  const auto a = metrics("b8"), b = metrics("b4x2");
  ASSERT_EQ(a.size(), 5u);
  ASSERT_EQ(b.size(), 5u);
  for (size_t i = 0; i < a.size(); ++i) {
    for (const char* k : {"loss", "loss_ce", "loss_kd", "loss_attn"}) {
      EXPECT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(), 1e-4) << k << " at step " << i + 1;
    }
  }
}

// Interrupted after its step-3 checkpoint and resumed, a distillation run continues exactly: the
// teacher is read again and its fingerprint matches; another teacher is refused.
TEST_F(DistillRunTest, ResumeIsExactAndTheTeacherMustBeTheSame) {
  const auto src = teacher();
  const std::vector<std::string> sets = {"distill.alpha=0.5", "checkpoint.every=3", "checkpoint.keep_last=5",
                                         "distill.attention={layer: 1, weight: 0.5}"};
  auto with = [&](std::vector<std::string> s, const std::string& name) {
    s.insert(s.end(), sets.begin(), sets.end());
    s.push_back("run.name=" + name);
    return s;
  };
  bitqat::training::train(finetune(src, 6, with({}, "full")));
  TrainOptions interrupt;
  interrupt.after_step = [](int64_t step) {
    if (step == 3) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(bitqat::training::train(finetune(src, 6, with({}, "split")), interrupt), std::runtime_error);
  TrainOptions resume;
  resume.resume = true;
  EXPECT_EQ(bitqat::training::train(finetune(src, 6, with({}, "split")), resume).start_step, 3);
  const auto a = metrics("full"), b = metrics("split");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["loss_kd"].get<double>(), b[i]["loss_kd"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["loss_attn"].get<double>(), b[i]["loss_attn"].get<double>()) << "step " << i + 1;
  }
  expect_same_weights("full", "split");

  // Another teacher (the fp run trained on) on resume: refused with both fingerprints.
  bitqat::training::train(
      Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, 3), "fp.yaml", {"run.name=fp2"}));
  auto e = error_of([&] {
    bitqat::training::train(finetune(src, 8, with({"distill.teacher=" + runs() + "/fp2"}, "split")), resume);
  });
  EXPECT_NE(e.find("state.json: the distillation teacher changed since this checkpoint: " +
                   fs::absolute(runs() + "/fp2").lexically_normal().string() + " has fingerprint"),
            std::string::npos)
      << e;
  // A run without distillation cannot switch it on at resume.
  bitqat::training::train(finetune(src, 3, {"run.name=nokd", "checkpoint.every=3"}));
  e = error_of([&] { bitqat::training::train(finetune(src, 6, with({}, "nokd")), resume); });
  EXPECT_NE(e.find("the checkpoint records no distillation teacher"), std::string::npos) << e;
}

TEST_F(DistillRunTest, BadTeachersAndSettingsAreRefused) {
  const auto src = teacher(2);
  // A teacher with another vocabulary: a byte-level run with a 300-token model.
  bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, 2), "fp.yaml",
                                              {"run.name=v300", "model.vocab_size=300"}));
  auto e = error_of([&] { bitqat::training::train(finetune(src, 2, {"distill.teacher=" + runs() + "/v300"})); });
  EXPECT_NE(e.find(runs() + "/v300: the teacher's vocabulary has 300 tokens, the student's 256: distillation "
                            "compares the two models' distributions over the same tokens"),
            std::string::npos)
      << e;
  e = error_of([&] { finetune(src, 2, {"distill.alpha=1.5"}); });
  EXPECT_NE(e.find("distill.alpha"), std::string::npos) << e;
  EXPECT_NE(e.find("expected a value in [0, 1]"), std::string::npos) << e;
  e = error_of([&] { finetune("", 2, {"distill.alpha=0.5"}); });
  EXPECT_NE(e.find("no teacher: set distill.teacher to a model path, or init_from"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.hidden={layers: [2]}"}); });
  EXPECT_NE(e.find("holds block 2, but the model has 2 blocks (0 to 1)"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.beta=1"}); });
  EXPECT_NE(e.find("beta"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.teacher=" + runs() + "/nothing"}); });
  EXPECT_NE(e.find("expected an existing model path"), std::string::npos) << e;
  // distill.attention: the block, the relations, the heads (the tiny model: q 4 heads x 8 = 32 features,
  // k and v 2 x 8 = 16), checkpointing, and a teacher that is not a language model.
  e = error_of([&] { finetune(src, 2, {"distill.attention={layer: 2}"}); });
  EXPECT_NE(e.find("distill.attention.layer = 2, but the model has 2 blocks (0 to 1)"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.attention={weight: 1}"}); });
  EXPECT_NE(e.find("layer"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.attention={layer: 0, relations: [q, o]}"}); });
  EXPECT_NE(e.find("relations"), std::string::npos) << e;
  EXPECT_NE(e.find("a non-empty list of q, k, v, each at most once"), std::string::npos) << e;
  e = error_of([&] { finetune(src, 2, {"distill.attention={layer: 0, heads: 32}"}); });
  EXPECT_NE(e.find("32 relation heads do not split k (its 2 heads x 8 = 16 features) into equal parts"),
            std::string::npos)
      << e;
  EXPECT_EQ(finetune(src, 2, {"distill.attention={layer: 0, heads: 32, relations: [q]}"}).distill.attention.heads, 32);
  e = error_of([&] {
    finetune(src, 2, {"distill.attention={layer: 0}", "train.activation_checkpointing=full"});
  });
  EXPECT_NE(e.find("with train.activation_checkpointing = full: the block's q, k, v are read outside the block"),
            std::string::npos)
      << e;
  bitqat::training::train(Config::load_string(fmt::format(R"(
run: {{name: cnn, dir: {}, seed: 5}}
model: {{kind: cnn, channels1: 4, channels2: 4, hidden: 8}}
quant: {{weight: {{type: none}}, activation: {{type: none}}}}
data: {{kind: fashion_mnist}}
optim: {{lr: {{kind: constant, value: 0.001}}}}
train: {{steps: 1, batch_size: 4, log_every: 1, eval_every: 0, eval_batches: 1}}
checkpoint: {{every: 0, keep_last: 1}}
device: {{type: cpu, threads: 1}}
)",
                                                         runs()),
                                             "cnn.yaml", {}));
  e = error_of([&] { bitqat::training::train(finetune(src, 2, {"distill.teacher=" + runs() + "/cnn"})); });
  EXPECT_NE(e.find(runs() + "/cnn: the teacher is a bitqat run whose model is not a language model"),
            std::string::npos)
      << e;
  // enabled: false turns the section off (the no-distillation row of the README's table).
  EXPECT_FALSE(finetune(src, 2, {"distill.alpha=0.5", "distill.enabled=false"}).distill.enabled);
}
