// End-to-end trainer tests on tiny models: a golden loss curve, learning, exact resume, refusal of
// corrupted checkpoints and incompatible configs, non-finite step handling.
#include "training/trainer.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include "bitlinear/convert.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/export_packed.hpp"
#include "models/lm.hpp"
#include "tests/command.hpp"
#include "tests/temp_dir.hpp"
#include "tests/user_error.hpp"
#include "training/run_loader.hpp"

using bitqat::testing::error_of;

namespace fs = std::filesystem;
using bitqat::training::Config;
using bitqat::training::TrainOptions;

namespace {

// A tiny ternary byte-level LM on a text file made by the test: fast enough for a unit test.
std::string tiny_lm_yaml(const std::string& dir, const std::string& text_path, int steps) {
  return fmt::format(R"(
run: {{name: tiny, dir: {}, seed: 7}}
model: {{kind: lm, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 64, max_seq_len: 32}}
quant:
  weight: {{type: ternary, granularity: per_channel}}
  activation: {{type: per_token, bits: 8}}
  lambda_w: {{kind: linear, start: 0, end: 10}}
data: {{kind: text, path: {}, seq_len: 32, val_fraction: 0.1}}
optim:
  lr: {{kind: warmup_cosine, peak: 0.01, warmup_steps: 3}}
  weight_decay: {{kind: two_stage, value: 0.1}}
train: {{steps: {}, batch_size: 4, grad_accum: 2, log_every: 1, eval_every: 10, eval_batches: 2}}
checkpoint: {{every: 5, keep_last: 10}}
device: {{type: cpu, threads: 1}}
)",
                     dir, text_path, steps);
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = bitqat::testing::fresh_test_dir("trainer");
    text_ = (dir_ / "text.txt").string();
    // Deterministic, learnable text: a repeated verse-like pattern with some variation.
    std::string s;
    for (int i = 0; i < 400; ++i)
      s += fmt::format("And the {} said unto them, {} times.\n", i % 7 == 0 ? "LORD" : "man", i % 13);
    bitqat::core::write_file_atomic(text_, s);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config config(int steps, const std::vector<std::string>& sets = {}) {
    return Config::load_string(tiny_lm_yaml((dir_ / "runs").string(), text_, steps), "tiny.yaml", sets);
  }
  std::vector<nlohmann::json> metrics(const std::string& run = "tiny") {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir_ / "runs" / run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }
  static std::vector<double> losses(const std::vector<nlohmann::json>& m) {
    std::vector<double> out;
    for (const auto& r : m) {
      if (r.contains("loss") && !r["loss"].is_null()) out.push_back(r["loss"].get<double>());
    }
    return out;
  }
  // A 12-step run of `sets` as run "full", and the same run as "split" interrupted right after its
  // step-5 checkpoint (as a kill would), then resumed. (Schedules are functions of train.steps, so
  // the interrupted run has the same config.) Returns the resumed run's start step.
  int64_t train_full_and_resumed(std::vector<std::string> sets) {
    auto with = [&](const std::string& name) {
      auto all = sets;
      all.push_back("run.name=" + name);
      return config(12, all);
    };
    bitqat::training::train(with("full"));
    TrainOptions interrupt;
    interrupt.after_step = [](int64_t step) {
      if (step == 5) throw std::runtime_error("interrupted");
    };
    EXPECT_THROW(bitqat::training::train(with("split"), interrupt), std::runtime_error);
    TrainOptions resume;
    resume.resume = true;
    return bitqat::training::train(with("split"), resume).start_step;
  }
  // The newest checkpoint of a run.
  bitqat::checkpoints::CheckpointData latest(const std::string& run) {
    return bitqat::checkpoints::read_checkpoint(
        *bitqat::checkpoints::find_latest_checkpoint((dir_ / "runs" / run / "checkpoints").string()));
  }
  fs::path dir_;
  std::string text_;
};

}  // namespace

TEST_F(TrainerTest, GoldenLossCurve) {
  // The committed curve pins the numerics: a change to quantizers, model, optimizer or data order
  // shows up here. Regenerate with BITQAT_UPDATE_GOLDEN=1 only for an intended change.
  bitqat::training::train(config(20));
  const auto got = losses(metrics());
  ASSERT_EQ(got.size(), 20u);
  const std::string golden = std::string(BITQAT_SOURCE_DIR) + "/tests/golden/tiny_lm_losses.json";
  if (std::getenv("BITQAT_UPDATE_GOLDEN")) {
    bitqat::core::write_file_atomic(golden, nlohmann::json(got).dump(1) + "\n");
  }
  const auto want = nlohmann::json::parse(bitqat::core::read_file(golden)).get<std::vector<double>>();
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-4 * std::max(1.0, std::fabs(want[i]))) << "step " << i + 1;
  }
}

TEST_F(TrainerTest, LossFallsClearly) {
  const auto r = bitqat::training::train(config(60, {"train.eval_every=60", "checkpoint.every=0"}));
  const auto l = losses(metrics());
  ASSERT_EQ(l.size(), 60u);
  const double first = (l[0] + l[1] + l[2]) / 3.0;
  const double last = (l[57] + l[58] + l[59]) / 3.0;
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  ASSERT_TRUE(r.last_val_loss.has_value());
  EXPECT_LT(*r.last_val_loss, first);
  // The ramp ran: lambda_w went 0 -> 1 over 10 steps, lambda_a stayed 1.
  std::vector<nlohmann::json> steps;
  for (const auto& rec : metrics()) {
    if (rec.contains("lambda_w")) steps.push_back(rec);
  }
  ASSERT_EQ(steps.size(), 60u);
  EXPECT_DOUBLE_EQ(steps[0]["lambda_w"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(steps[5]["lambda_w"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(steps.back()["lambda_w"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(steps[0]["lambda_a"].get<double>(), 1.0);
}

TEST_F(TrainerTest, ResumeIsBitExact) {
  // One run of 12 steps against the same run interrupted after step 5 and resumed.
  EXPECT_EQ(train_full_and_resumed({}), 5);
  const auto a = losses(metrics("full"));
  const auto b = losses(metrics("split"));
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;

  const auto ca = latest("full"), cb = latest("split");
  ASSERT_EQ(ca.step, 12);
  ASSERT_EQ(cb.step, 12);
  ASSERT_EQ(ca.model.size(), cb.model.size());
  for (size_t i = 0; i < ca.model.size(); ++i) {
    EXPECT_EQ(ca.model[i].first, cb.model[i].first);
    EXPECT_TRUE(ca.model[i].second.equal(cb.model[i].second)) << ca.model[i].first;
  }
}

// quant.weight.scale: learned: the scales are parameters (checkpointed, in AdamW's state), resume is
// exact, training moves them away from absmean, and the packed export holds them.
TEST_F(TrainerTest, LearnedScalesResumeExactlyAndAreWhatThePackedExportHolds) {
  EXPECT_EQ(train_full_and_resumed({"quant.weight.scale=learned", "train.log_every=1"}), 5);
  const auto a = losses(metrics("full")), b = losses(metrics("split"));
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
  const auto ca = latest("full"), cb = latest("split");
  ASSERT_EQ(ca.model.size(), cb.model.size());
  for (size_t i = 0; i < ca.model.size(); ++i) {
    EXPECT_TRUE(ca.model[i].second.equal(cb.model[i].second)) << ca.model[i].first;
  }
  ASSERT_EQ(ca.optimizer.size(), cb.optimizer.size());
  for (size_t i = 0; i < ca.optimizer.size(); ++i) {
    EXPECT_TRUE(ca.optimizer[i].second.equal(cb.optimizer[i].second)) << ca.optimizer[i].first;
  }
  // 12 layers (2 blocks x q, k, v, o, up, down: a relu2 FFN) have a scale; training moved each away from the
  // absmean of its final latent weights.
  auto run = bitqat::training::load_run((dir_ / "runs/full").string(), at::Device(at::kCPU));
  auto scales = bitqat::bitlinear::learned_scales(run.task->module());
  ASSERT_EQ(scales.size(), 12u);
  for (const auto& [name, l] : scales) {
    auto absmean = l->options.quant.weight;
    absmean.scale = bitqat::bitlinear::ScaleSource::kAbsmean;
    const auto gamma = bitqat::bitlinear::quantize_weight(l->weight, absmean).scales;
    EXPECT_GT((l->weight_scale - gamma).abs().max().item<float>(), 1e-4f * gamma.abs().max().item<float>()) << name;
  }
  // The packed export holds each layer's learned codes and scales.
  const auto out = (dir_ / "packed").string();
  auto src = bitqat::training::load_run((dir_ / "runs/full").string(), at::Device(at::kCPU));  // packed in place
  bitqat::interop::export_packed(src.task->module(), bitqat::core::to_yaml_string(src.cfg.resolved()), src.checkpoint,
                                 src.step, out, (dir_ / "runs/full").string());
  auto packed = bitqat::training::load_run(out, at::Device(at::kCPU));
  const auto packed_modules = packed.task->module().named_modules();
  for (const auto& [name, l] : scales) {
    const auto layer = name.substr(0, name.size() - std::string(".weight_scale").size());
    const auto* p = packed_modules[layer + ".packed"]->as<bitqat::bitlinear::ops::PackedBitLinearImpl>();
    ASSERT_NE(p, nullptr) << layer;
    const auto q = l->quantized_weight();
    bitqat::bitlinear::ops::PackedTernary pt;
    pt.packed = p->packed;
    pt.n = p->out_features;
    pt.k = p->in_features;
    EXPECT_TRUE(bitqat::bitlinear::ops::unpack_codes(pt).equal(q.codes)) << layer;
    EXPECT_TRUE(p->scales.equal(l->weight_scale.detach().clamp_min(l->options.quant.weight.eps))) << layer;
  }
  // The same model: the packed layers sum the code products exactly, the trained ones in float32 (the
  // fake-quant path), which differ by float rounding and, where an 8-bit activation code of the next
  // layer lands on the other side of a rounding tie, by one step of it; the loss agrees to 1e-4.
  const auto val = bitqat::training::open_validation_data(run, {})->val_batches(4, 2);
  bitqat::bitlinear::set_quant_lambdas(run.task->module(), 1.0, 1.0);
  const auto want = run.task->evaluate(val, at::Device(at::kCPU)).loss;
  const auto got = packed.task->evaluate(val, at::Device(at::kCPU)).loss;
  EXPECT_NEAR(got, want, 1e-4 * want);
}

// train.ema: the average is checkpointed and resumed exactly, and what eval, generate, sample,
// quantize and export open (load_run) unless they ask for the raw weights.
TEST_F(TrainerTest, EmaResumesExactlyAndIsWhatARunOpensAs) {
  EXPECT_EQ(train_full_and_resumed({"train.ema.decay=0.75", "train.ema.start_step=3"}), 5);
  const auto ca = latest("full"), cb = latest("split");
  ASSERT_FALSE(ca.ema.empty());
  ASSERT_EQ(ca.ema.size(), cb.ema.size());
  std::map<std::string, at::Tensor> weights(ca.model.begin(), ca.model.end());
  size_t differ = 0;
  for (size_t i = 0; i < ca.ema.size(); ++i) {
    EXPECT_EQ(ca.ema[i].first, cb.ema[i].first);
    EXPECT_TRUE(ca.ema[i].second.equal(cb.ema[i].second)) << ca.ema[i].first;
    differ += !ca.ema[i].second.equal(weights.at(ca.ema[i].first));
  }
  EXPECT_GT(differ, 0u) << "after 12 steps at decay 0.75 the average should differ from the weights";

  // load_run takes the average; use_ema false the raw weights.
  const auto run = bitqat::training::load_run((dir_ / "runs/full").string(), at::Device(at::kCPU));
  EXPECT_TRUE(run.ema);
  const auto raw = bitqat::training::load_run((dir_ / "runs/full").string(), at::Device(at::kCPU), false);
  EXPECT_FALSE(raw.ema);
  std::map<std::string, at::Tensor> avg(ca.ema.begin(), ca.ema.end());
  for (const auto& item : run.task->module().named_parameters(true)) {
    EXPECT_TRUE(item.value().equal(avg.at(item.key()))) << item.key();
  }
  for (const auto& item : raw.task->module().named_parameters(true)) {
    EXPECT_TRUE(item.value().equal(weights.at(item.key()))) << item.key();
  }
}

// An average that does not match the model's parameters, or a file the manifest does not list, is
// refused: never a silent fall-back to the raw weights.
TEST_F(TrainerTest, AlteredAveragesAreRefused) {
  bitqat::training::train(config(5, {"train.ema.decay=0.75"}));
  const auto run = (dir_ / "runs/tiny").string();
  const auto ck_dir = *bitqat::checkpoints::find_latest_checkpoint(run + "/checkpoints");
  const auto good = bitqat::checkpoints::read_checkpoint(ck_dir);
  ASSERT_TRUE(good.has_ema);
  auto rewrite = [&](const std::function<void(bitqat::checkpoints::CheckpointData&)>& change) {
    auto ck = bitqat::checkpoints::read_checkpoint(ck_dir);
    std::vector<std::pair<std::string, at::Tensor>> ema;
    for (const auto& [n, t] : ck.ema) ema.emplace_back(n, t.clone());  // off the file being replaced
    ck.ema = ema;
    change(ck);
    bitqat::checkpoints::write_checkpoint(run + "/checkpoints", ck, 10);
  };
  auto opened = [&] { return error_of([&] { bitqat::training::load_run(run, at::Device(at::kCPU)); }); };
  const std::string first = good.ema.front().first;
  rewrite([](auto& ck) { ck.ema.clear(); });  // listed, but empty
  EXPECT_NE(opened().find("ema.safetensors: the average of " + first + " is missing"), std::string::npos) << opened();
  rewrite([&](auto& ck) {
    ck.ema = good.ema;
    ck.ema.emplace_back("bogus.weight", at::zeros({2}));
  });
  EXPECT_NE(opened().find("ema.safetensors: bogus.weight is not a trainable parameter of this model"),
            std::string::npos)
      << opened();
  TrainOptions resume;
  resume.resume = true;
  EXPECT_NE(error_of([&] {
              bitqat::training::train(config(8, {"train.ema.decay=0.75"}), resume);
            }).find("bogus.weight is not a trainable parameter of this model"),
            std::string::npos);
  // A stray ema.safetensors beside a checkpoint that does not list it.
  rewrite([&](auto& ck) {
    ck.ema.clear();
    ck.has_ema = false;
  });
  fs::copy_file(ck_dir + "/model.safetensors", ck_dir + "/ema.safetensors");
  EXPECT_NE(opened().find("ema.safetensors is there but manifest.json does not list it"), std::string::npos)
      << opened();
}

// The average of a run that trained without it cannot be made up on resume once it has started.
TEST_F(TrainerTest, EmaCannotStartInThePastOfAResumedRun) {
  TrainOptions interrupt;
  interrupt.after_step = [](int64_t step) {
    if (step == 5) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(bitqat::training::train(config(12), interrupt), std::runtime_error);
  TrainOptions resume;
  resume.resume = true;
  const auto e = error_of([&] {
    bitqat::training::train(config(12, {"train.ema.decay=0.9", "train.ema.start_step=2"}), resume);
  });
  EXPECT_NE(e.find("holds no averaged weights (the run trained without train.ema) and --set "
                   "train.ema.start_step=2: train.ema.start_step = 2, before its step 5"),
            std::string::npos)
      << e;
  // Starting the average at the resumed step or later is exact: until then it is the weights.
  EXPECT_EQ(bitqat::training::train(config(12, {"train.ema.decay=0.9", "train.ema.start_step=5"}), resume).start_step,
            5);
}

TEST_F(TrainerTest, EmaSettingsAreChecked) {
  auto err = [&](const std::vector<std::string>& sets) { return error_of([&] { config(12, sets); }); };
  EXPECT_NE(
      err({"train.ema.decay=1"}).find("--set train.ema.decay=1: train.ema.decay = 1: expected a number in (0, 1)"),
      std::string::npos)
      << err({"train.ema.decay=1"});
  EXPECT_NE(err({"train.ema.decay=0"}).find("expected a number in (0, 1)"), std::string::npos);
  EXPECT_NE(err({"train.ema.start_step=13"}).find("train.ema.start_step = 13 is beyond train.steps = 12"),
            std::string::npos)
      << err({"train.ema.start_step=13"});
  EXPECT_NE(err({"train.ema.every=3"}).find("unknown key 'every'"), std::string::npos) << err({"train.ema.every=3"});
}

namespace {

using Points = std::map<std::string, std::vector<std::pair<int64_t, float>>>;

// What metrics.jsonl says TensorBoard should show: every number of every line (but "step" and
// "elapsed_s") at the line's step, as float32 (event files hold simple_value floats).
Points expected_scalars(const std::vector<nlohmann::json>& lines) {
  Points out;
  for (const auto& rec : lines) {
    for (const auto& [key, v] : rec.items()) {
      if (key == "step" || key == "elapsed_s" || !v.is_number() || !std::isfinite(v.get<double>())) continue;
      out[key].emplace_back(rec["step"].get<int64_t>(), v.get<float>());
    }
  }
  return out;
}

// The scalars TensorBoard's own reader (EventAccumulator) reads from a run directory, and how many
// event files it holds; nullopt (after GTEST_SKIP) when the tensorboard package is missing.
struct TensorBoardView {
  Points points;
  int files = 0;
};
std::optional<TensorBoardView> read_with_tensorboard(const fs::path& run_dir) {
  using bitqat::testing::run_command;
  const std::string python = BITQAT_PYTHON;
  if (python.empty() || run_command(fmt::format("'{}' -c 'import tensorboard'", python)).code != 0) return std::nullopt;
  const auto r = run_command(
      fmt::format("'{}' '{}/tests/training/tensorboard_check.py' '{}'", python, BITQAT_SOURCE_DIR, run_dir.string()));
  EXPECT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind("\n{") + 1));  // after any warning lines
  TensorBoardView view;
  for (const auto& [tag, points] : j.items()) {
    if (tag == "_files") {
      view.files = points.get<int>();
      continue;
    }
    // A Python float holds the float32 exactly; its JSON text reads back as the same double.
    for (const auto& p : points) view.points[tag].emplace_back(p[0].get<int64_t>(), p[1].get<float>());
  }
  return view;
}

void expect_same_points(const Points& got, const Points& want) {
  for (const char* tag :
       {"loss", "lr", "weight_decay", "lambda_w", "lambda_a", "grad_norm", "tok_per_s", "val_loss", "val_bpb"}) {
    EXPECT_TRUE(want.count(tag)) << tag << " is not in metrics.jsonl";
  }
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [tag, points] : want) {
    ASSERT_TRUE(got.count(tag)) << tag;
    const auto& g = got.at(tag);
    ASSERT_EQ(g.size(), points.size()) << tag;
    for (size_t i = 0; i < points.size(); ++i) {
      EXPECT_EQ(g[i].first, points[i].first) << tag << " point " << i;
      EXPECT_EQ(g[i].second, points[i].second) << tag << " at step " << points[i].first;
    }
  }
}

}  // namespace

TEST_F(TrainerTest, TensorBoardShowsWhatMetricsJsonlHolds) {
  bitqat::training::train(config(12, {"log.tensorboard=true"}));
  bitqat::training::train(config(4, {"run.name=off"}));  // the default: no event file
  EXPECT_TRUE(bitqat::core::glob_files((dir_ / "runs/off/events.out.tfevents.*").string()).empty());
  const auto view = read_with_tensorboard(dir_ / "runs/tiny");
  if (!view) GTEST_SKIP() << "the tensorboard Python package is not installed (launch/setup.sh installs it)";
  EXPECT_EQ(view->files, 1);
  const auto want = expected_scalars(metrics());
  ASSERT_EQ(want.at("loss").size(), 12u);
  ASSERT_EQ(want.at("val_loss").size(), 2u);  // steps 10 and 12
  expect_same_points(view->points, want);
}

TEST_F(TrainerTest, TensorBoardShowsEachStepOnceAfterAResume) {
  // Checkpoints at 5 and 10, evaluations every 3 steps. The first process dies after step 8: it
  // logged steps 6 to 8 and evaluated at 6 after its last checkpoint. The resumed one starts from
  // step 5 in a second event file and logs those steps again.
  const std::vector<std::string> sets = {"log.tensorboard=true", "train.eval_every=3"};
  TrainOptions interrupt;
  interrupt.after_step = [](int64_t step) {
    if (step == 8) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(bitqat::training::train(config(12, sets), interrupt), std::runtime_error);
  ASSERT_EQ(losses(metrics()).size(), 8u);
  TrainOptions resume;
  resume.resume = true;
  EXPECT_EQ(bitqat::training::train(config(12, sets), resume).start_step, 5);
  const auto view = read_with_tensorboard(dir_ / "runs/tiny");
  if (!view) GTEST_SKIP() << "the tensorboard Python package is not installed (launch/setup.sh installs it)";
  EXPECT_EQ(view->files, 2);
  const auto want = expected_scalars(metrics());  // metrics.jsonl was cut back to step 5 on resume
  ASSERT_EQ(want.at("loss").size(), 12u);
  ASSERT_EQ(want.at("val_loss").size(), 4u);  // steps 3, 6, 9, 12
  expect_same_points(view->points, want);
  for (const auto& [tag, points] : view->points) {
    for (size_t i = 1; i < points.size(); ++i) EXPECT_LT(points[i - 1].first, points[i].first) << tag;
  }
}

TEST_F(TrainerTest, RefusesToOverwriteOrResumeNothing) {
  EXPECT_NE(error_of([&] {
              TrainOptions o;
              o.resume = true;
              bitqat::training::train(config(5), o);
            }).find("no complete checkpoint"),
            std::string::npos);
  bitqat::training::train(config(5));
  EXPECT_NE(error_of([&] { bitqat::training::train(config(5)); }).find("pass --resume"), std::string::npos);
}

TEST_F(TrainerTest, CorruptedCheckpointIsRefused) {
  bitqat::training::train(config(5));
  const auto ck = *bitqat::checkpoints::find_latest_checkpoint((dir_ / "runs/tiny/checkpoints").string());
  const auto model_file = ck + "/model.safetensors";
  auto bytes = bitqat::core::read_file(model_file);
  bytes[bytes.size() / 2] ^= 0x5a;
  std::ofstream(model_file, std::ios::binary | std::ios::trunc) << bytes;
  TrainOptions o;
  o.resume = true;
  const auto msg = error_of([&] { bitqat::training::train(config(10), o); });
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
}

TEST_F(TrainerTest, IncompatibleConfigIsRefusedOnResume) {
  bitqat::training::train(config(5));
  TrainOptions o;
  o.resume = true;
  const auto msg = error_of([&] { bitqat::training::train(config(10, {"model.dim=48"}), o); });
  EXPECT_NE(msg.find("config hash"), std::string::npos) << msg;
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedThenStop) {
  TrainOptions o;
  o.loss_hook = [](int64_t step, int, at::Tensor& loss) {
    if (step == 2) loss = loss * std::numeric_limits<double>::quiet_NaN();
  };
  const auto r = bitqat::training::train(config(6, {"checkpoint.every=0", "train.eval_every=0"}), o);
  EXPECT_EQ(r.skipped_steps, 1);
  EXPECT_EQ(r.final_step, 6);
  const auto m = metrics();
  int skipped = 0;
  for (const auto& rec : m) skipped += rec.value("skipped", false);
  EXPECT_EQ(skipped, 1);

  TrainOptions always;
  always.loss_hook = [](int64_t step, int, at::Tensor& loss) {
    if (step >= 1) loss = loss * std::numeric_limits<double>::infinity();
  };
  const auto msg = error_of([&] {
    bitqat::training::train(config(20, {"run.name=bad", "train.max_bad_steps=3", "checkpoint.every=0"}), always);
  });
  EXPECT_NE(msg.find("3 consecutive steps"), std::string::npos) << msg;
}

TEST_F(TrainerTest, StepsSettledAtLogStepsGiveTheSameRunAndCatchGradientOnlyFaults) {
  // Flags stay on the device between log steps (log_every 5) and no norm is computed when
  // grad_clip is 0 and the step is not logged. The run must equal the one settled every step.
  const std::vector<std::string> common = {"checkpoint.every=0", "train.eval_every=0", "optim.grad_clip=0"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), common.begin(), common.end());
    return extra;
  };
  // A NaN in the gradients only: sqrt'(0) = inf times d(loss - loss) = 0 gives NaN, while the
  // loss itself stays finite. Injected at step 3 (0-based 2).
  TrainOptions o;
  o.loss_hook = [](int64_t step, int, at::Tensor& loss) {
    if (step == 2) loss = loss + 0.0 * at::sqrt(loss - loss);
  };
  const auto every = bitqat::training::train(config(10, with({"run.name=every", "train.log_every=1"})), o);
  const auto every_m = metrics("every");
  const auto deferred = bitqat::training::train(config(10, with({"run.name=deferred", "train.log_every=5"})), o);
  const auto deferred_m = metrics("deferred");
  EXPECT_EQ(every.skipped_steps, 1);
  EXPECT_EQ(deferred.skipped_steps, 1);
  EXPECT_EQ(every.last_loss, deferred.last_loss);  // the same updates, bit for bit
  std::vector<int64_t> skipped;
  for (const auto& rec : deferred_m) {
    if (rec.value("skipped", false)) skipped.push_back(rec["step"].get<int64_t>());
  }
  EXPECT_EQ(skipped, std::vector<int64_t>{3});
  std::vector<int64_t> logged;
  for (const auto& rec : deferred_m) {
    if (rec.contains("grad_norm")) logged.push_back(rec["step"].get<int64_t>());
  }
  EXPECT_EQ(logged, (std::vector<int64_t>{5, 10}));
  for (const auto& rec : deferred_m) {
    if (rec.contains("grad_norm")) {
      EXPECT_TRUE(std::isfinite(rec["grad_norm"].get<double>())) << rec.dump();
    }
  }

  // The streak limit still stops the run, naming the steps, at the next settling point.
  TrainOptions always;
  always.loss_hook = [](int64_t step, int, at::Tensor& loss) {
    if (step >= 1) loss = loss * std::numeric_limits<double>::infinity();
  };
  const auto msg = error_of([&] {
    bitqat::training::train(config(20, with({"run.name=bad", "train.log_every=5", "train.max_bad_steps=3"})), always);
  });
  EXPECT_NE(
      msg.find("training stopped at step 5: 3 consecutive steps with a non-finite loss or gradient (steps 2 to 4"),
      std::string::npos)
      << msg;
}

// Recomputing the blocks in the backward pass changes memory, not numbers: the runs are the same,
// loss for loss and weight for weight (ternary weights ramping in, int8 activations, 2 micro-batches).
TEST_F(TrainerTest, ActivationCheckpointingLeavesTheRunUnchanged) {
  const std::vector<std::string> common = {"checkpoint.every=0", "train.eval_every=0"};
  auto run = [&](const std::string& name, const std::string& policy) {
    auto sets = common;
    sets.push_back("run.name=" + name);
    sets.push_back("train.activation_checkpointing=" + policy);
    bitqat::training::train(config(12, sets));
    return losses(metrics(name));
  };
  const auto none = run("none", "none");
  ASSERT_EQ(none.size(), 12u);
  for (const auto& [name, policy] :
       std::vector<std::pair<std::string, std::string>>{{"full", "full"}, {"every2", "{every_n: 2}"}}) {
    EXPECT_EQ(run(name, policy), none) << policy;
    const auto a = bitqat::checkpoints::read_checkpoint(
        *bitqat::checkpoints::find_latest_checkpoint((dir_ / "runs/none/checkpoints").string()));
    const auto b = bitqat::checkpoints::read_checkpoint(
        *bitqat::checkpoints::find_latest_checkpoint((dir_ / "runs" / name / "checkpoints").string()));
    ASSERT_EQ(a.model.size(), b.model.size());
    for (size_t i = 0; i < a.model.size(); ++i) {
      EXPECT_TRUE(a.model[i].second.equal(b.model[i].second)) << policy << ": " << a.model[i].first;
    }
  }
}

TEST_F(TrainerTest, ConfigErrorsNameFileLineAndKey) {
  const auto text = tiny_lm_yaml((dir_ / "runs").string(), text_, 10);
  auto err = [&](const std::vector<std::string>& sets) {
    try {
      Config::load_string(text, "tiny.yaml", sets);
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(err({"train.steps=-3"}), "--set train.steps=-3: train.steps = -3: expected a value in [1, 99999999]");
  EXPECT_NE(err({"train.stpes=3"}).find("unknown key 'stpes'"), std::string::npos);
  EXPECT_EQ(err({"optim.lr.warmup_steps=50"}),
            "--set optim.lr.warmup_steps=50: optim.lr.warmup_steps = 50 exceeds train.steps = 10");
  EXPECT_NE(err({"device.type=tpu"}).find("expected one of auto|cpu|cuda"), std::string::npos);
  EXPECT_NE(err({"data.path=/nonexistent.txt"}).find("/nonexistent.txt"), std::string::npos);
  // A location inside the file: train: is on line 12 of the document.
  try {
    Config::load_string(std::string(text).replace(text.find("steps: 10"), 9, "steps: ten"), "tiny.yaml");
    FAIL() << "expected a config error";
  } catch (const bitqat::core::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("tiny.yaml:12: train.steps = ten: expected an integer", 0), 0u) << e.what();
  }
}

TEST_F(TrainerTest, LoadRunEvaluatesTheCheckpoint) {
  bitqat::training::train(config(5));
  auto run = bitqat::training::load_run((dir_ / "runs/tiny").string(), at::Device(at::kCPU));
  EXPECT_EQ(run.step, 5);
  const auto ev =
      run.task->evaluate(bitqat::training::open_validation_data(run, {})->val_batches(4, 2), at::Device(at::kCPU));
  EXPECT_TRUE(std::isfinite(ev.loss));
  EXPECT_EQ(ev.metric_name, "val_bpb");
  EXPECT_NEAR(ev.metric, ev.loss / std::log(2.0), 1e-9);
}

// ---- resuming a finished run, the checkpoint's bookkeeping, and the config hash ----------------

TEST_F(TrainerTest, ResumingAFinishedRunSaysThereIsNothingToTrain) {
  bitqat::training::train(config(16, {"checkpoint.every=0"}));
  const auto lines = metrics().size();
  TrainOptions o;
  o.resume = true;
  const auto r = bitqat::training::train(config(16, {"checkpoint.every=0"}), o);
  EXPECT_TRUE(r.nothing_to_train);
  EXPECT_EQ(r.start_step, 16);
  EXPECT_EQ(r.final_step, 16);
  EXPECT_EQ(metrics().size(), lines);  // nothing written
  // train.steps below the checkpoint's step cannot be trained back.
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(4, {"checkpoint.every=0"}), o); }),
            "tiny.yaml:12: train.steps = 4 is below the step of the checkpoint to resume, 16 (" +
                (dir_ / "runs/tiny/checkpoints/step_00000016").string() +
                "): a run cannot be trained back; raise train.steps above 16 to continue it, or evaluate / export "
                "the checkpoint as it is");
  // A longer horizon trains on, and the checkpoint records the new plan and the lambdas it used.
  const auto more = bitqat::training::train(config(20, {"checkpoint.every=0"}), o);
  EXPECT_FALSE(more.nothing_to_train);
  EXPECT_EQ(more.final_step, 20);
  const auto ck = bitqat::checkpoints::read_checkpoint((dir_ / "runs/tiny/checkpoints/step_00000020").string());
  EXPECT_EQ(ck.state["train_steps"], 20);
  EXPECT_EQ(ck.state["lambda_w"], 1.0);  // the ramp ends at step 10
  EXPECT_EQ(ck.state["lambda_a"], 1.0);
}

TEST_F(TrainerTest, TheCheckpointRecordsTheLambdasOfItsLastStep) {
  // lambda_w ramps linearly 0 -> 1 over 10 steps: step s runs at s / 10; the checkpoint at step 5 was
  // trained last at step 4.
  bitqat::training::train(config(5, {"checkpoint.every=5"}));
  const auto ck = bitqat::checkpoints::read_checkpoint((dir_ / "runs/tiny/checkpoints/step_00000005").string());
  EXPECT_DOUBLE_EQ(ck.state["lambda_w"].get<double>(), 0.4);
  EXPECT_DOUBLE_EQ(ck.state["lambda_a"].get<double>(), 1.0);
}

TEST_F(TrainerTest, TheConfigHashIsOfTheParsedSettingsNotTheText) {
  const auto hash = [&](const std::string& yaml) { return Config::load_string(yaml, "h.yaml").compat_hash(); };
  const auto base = tiny_lm_yaml((dir_ / "runs").string(), text_, 10);
  // The same model with its keys in another order and its defaults spelled out.
  std::string reordered = base;
  const std::string model_line =
      "model: {kind: lm, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 64, max_seq_len: 32}";
  reordered.replace(reordered.find(model_line), model_line.size(),
                    "model: {max_seq_len: 32, ffn_dim: 64, n_kv_heads: 2, n_heads: 4, n_layers: 2, dim: 32, kind: lm, "
                    "ffn: relu2, sub_norm: true, rope_theta: 10000, norm_eps: 1.0e-6, tie_embeddings: true, "
                    "vocab_size: 256, init_std: 0.02}");
  EXPECT_EQ(hash(base), hash(reordered));
  // Settings that leave the tensors interchangeable do not count; those that do, do.
  EXPECT_EQ(Config::load_string(base, "h.yaml", {"model.max_seq_len=48", "data.seq_len=48"}).compat_hash(), hash(base));
  EXPECT_NE(Config::load_string(base, "h.yaml", {"model.dim=48"}).compat_hash(), hash(base));
  EXPECT_NE(Config::load_string(base, "h.yaml", {"quant.weight.granularity=per_tensor"}).compat_hash(), hash(base));
  EXPECT_NE(Config::load_string(base, "h.yaml", {"quant.exclude=[layers.0.*]"}).compat_hash(), hash(base));
  // And a resume across the two spellings is accepted.
  bitqat::training::train(Config::load_string(base, "a.yaml"));
  TrainOptions o;
  o.resume = true;
  EXPECT_EQ(error_of([&] { bitqat::training::train(Config::load_string(reordered, "b.yaml", {"train.steps=12"}), o); }),
            "");
}

TEST_F(TrainerTest, CheckpointsOfTheOldTextHashStillResume) {
  bitqat::training::train(config(5, {"checkpoint.every=5"}));
  const auto path = (dir_ / "runs/tiny/checkpoints/step_00000005").string();
  auto ck = bitqat::checkpoints::read_checkpoint(path);
  ck.state["config_hash"] = config(5).legacy_compat_hash();  // what bitqat 0.1 wrote
  bitqat::checkpoints::write_checkpoint((dir_ / "runs/tiny/checkpoints").string(), ck, 10);
  TrainOptions o;
  o.resume = true;
  EXPECT_EQ(bitqat::training::train(config(7, {"checkpoint.every=5"}), o).final_step, 7);
}

TEST_F(TrainerTest, TrainingWindowsLongerThanTheModelAreRefused) {
  EXPECT_EQ(error_of([&] {
              config(4, {"data.seq_len=128", "model.max_seq_len=64"});
            }),
            "--set data.seq_len=128: data.seq_len = 128 exceeds --set model.max_seq_len=64: model.max_seq_len = 64: "
            "training windows longer than the model's context would train positions the model (and its exports) do "
            "not have; lower data.seq_len or raise model.max_seq_len");
  EXPECT_EQ(error_of([&] { config(4, {"data.seq_len=33"}); }),
            "--set data.seq_len=33: data.seq_len = 33 exceeds tiny.yaml:3: model.max_seq_len = 32: training windows "
            "longer than the model's context would train positions the model (and its exports) do not have; lower "
            "data.seq_len or raise model.max_seq_len");
}

TEST_F(TrainerTest, AnImpossibleBatchIsAConfigErrorBeforeAnyAllocation) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto msg = error_of([&] {
    bitqat::training::train(
        config(4, {"train.batch_size=1048576", "data.seq_len=1048576", "model.max_seq_len=1048576"}));
  });
  // The memory plan (training/memory_plan.hpp) of 2^40 tokens per micro-batch, against this machine's RAM.
  EXPECT_EQ(msg.rfind("the memory plan needs 3051520.06 GiB (3276544718294528 bytes) per rank (dist.shard none, world "
                      "size 1), more than the ",
                      0),
            0u)
      << msg;
  EXPECT_NE(msg.find(" GiB of this machine's RAM; the biggest term is saved activations, 3051520.00 GiB"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("a lower train.batch_size (now 1048576; train.grad_accum keeps the global batch) or data.seq_len "
                     "(now 1048576)"),
            std::string::npos)
      << msg;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_FALSE(fs::exists(dir_ / "runs/tiny"));
}

TEST_F(TrainerTest, NonFiniteWeightsAreNeverLoadedNorWritten) {
  // A checkpoint with one NaN, as the issue found it: init_from refused it only after training had
  // written checkpoints holding the NaN.
  bitqat::training::train(config(5, {"checkpoint.every=5", "run.name=src"}));
  const auto path = (dir_ / "runs/src/checkpoints/step_00000005").string();
  auto ck = bitqat::checkpoints::read_checkpoint(path);
  for (auto& [name, t] : ck.model) {
    if (name == "layers.0.ffn.up.weight") t[3][7] = std::numeric_limits<float>::quiet_NaN();
  }
  bitqat::checkpoints::write_checkpoint((dir_ / "runs/src/checkpoints").string(), ck, 10);
  const std::string want = path +
                           "/model.safetensors: tensor 'layers.0.ffn.up.weight' holds 1 non-finite value(s) "
                           "(the first, nan, at flat index 103); refusing it: the file is corrupted or came "
                           "from a run that diverged";
  // init_from
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(5, {"run.name=ft", "init_from=" + path})); }), want);
  EXPECT_FALSE(fs::exists(dir_ / "runs/ft/checkpoints"));
  // --resume
  TrainOptions o;
  o.resume = true;
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8, {"run.name=src", "checkpoint.every=5"}), o); }), want);
  // eval, generate, export: every one opens the run through load_run
  EXPECT_EQ(error_of([&] { bitqat::training::load_run((dir_ / "runs/src").string(), at::Device(at::kCPU)); }), want);
}

TEST_F(TrainerTest, ForeignTensorsAndLinesInARunAreRefusedOnResume) {
  bitqat::training::train(config(5, {"checkpoint.every=5"}));
  const auto ckdir = (dir_ / "runs/tiny/checkpoints").string();
  const auto path = ckdir + "/step_00000005";
  TrainOptions o;
  o.resume = true;
  // extra.safetensors holds what the writer writes: rng.cpu and rng.cuda.N.
  auto ck = bitqat::checkpoints::read_checkpoint(path);
  const auto good_extra = ck.extra;
  ck.extra.emplace_back("rng.cuda.x", at::zeros({4}, at::kByte));
  bitqat::checkpoints::write_checkpoint(ckdir, ck, 10);
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8), o); }),
            path +
                "/extra.safetensors: tensor 'rng.cuda.x' is not a generator state this program writes (expected "
                "rng.cpu or rng.cuda.N)");
  ck.extra = good_extra;
  ck.extra[0].second = at::zeros({3}, at::kFloat);
  bitqat::checkpoints::write_checkpoint(ckdir, ck, 10);
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8), o); }),
            path + "/extra.safetensors: tensor 'rng.cpu' is Float [3]; a generator state is uint8 [n]");
  // state.json fields of the wrong type.
  ck.extra = good_extra;
  ck.state["bad_streak"] = "none";
  bitqat::checkpoints::write_checkpoint(ckdir, ck, 10);
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8), o); }),
            path + "/state.json: bad_streak = \"none\": expected an integer in [0, 99999999]");
  ck.state["bad_streak"] = 0;
  ck.state["config_hash"] = 7;
  bitqat::checkpoints::write_checkpoint(ckdir, ck, 10);
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8), o); }),
            path + "/state.json: config_hash = 7: expected a string");
  ck.state["config_hash"] = config(8).compat_hash();
  bitqat::checkpoints::write_checkpoint(ckdir, ck, 10);
  // A metrics.jsonl line of the wrong type.
  const auto mpath = (dir_ / "runs/tiny/metrics.jsonl").string();
  const auto lines = bitqat::core::read_file(mpath);
  bitqat::core::write_file_atomic(mpath, lines + "[1, 2, 3]\n");
  EXPECT_EQ(error_of([&] { bitqat::training::train(config(8), o); }),
            mpath +
                ":7: [1, 2, 3]: expected a JSON object with an integer \"step\" (this file is written by bitqat "
                "train; move the foreign line away)");
  bitqat::core::write_file_atomic(mpath, lines + "{\"step\": 3}\n{\"step\": 6, \"loss\"");  // a line cut by a kill
  EXPECT_EQ(bitqat::training::train(config(8), o).final_step, 8);
}
