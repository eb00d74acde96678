// Data-free ternarization: the output is a complete run directory (eval, resume and init_from
// accept it) whose reported validation loss is what eval measures; and on a tiny model, a
// progressive fine-tune from the full-precision run beats it.
#include "training/quantize.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoints/checkpoint.hpp"
#include "interop/init_source.hpp"
#include "tests/training/tiny_runs.hpp"
#include "training/run_loader.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using bitqat::testing::error_of;
using bitqat::training::Config;

namespace {

class QuantizeTest : public bitqat::testing::TinyRunTest {
 protected:
  bitqat::training::TrainResult train_fp(int steps) {
    return bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, steps), "fp.yaml"));
  }
};

}  // namespace

TEST_F(QuantizeTest, WritesACompleteTernaryRun) {
  train_fp(10);
  const auto src = runs() + "/fp";
  const auto out = runs() + "/fp_ternary";
  const auto r = bitqat::training::quantize_run(src, out + "/", {}, at::kCPU);  // a trailing '/' is fine
  EXPECT_EQ(r.out_dir, out);
  EXPECT_EQ(r.source_step, 10);
  EXPECT_EQ(r.quantized_layers.size(), 2u * 6u);  // q, k, v, o, up, down per layer (ffn relu2)
  EXPECT_TRUE(std::isfinite(r.eval.loss));

  // eval reads the same model and the same validation batches.
  auto run = bitqat::training::load_run(out, at::kCPU);
  const auto ev = run.task->evaluate(bitqat::training::open_validation_data(run, {})->val_batches(
                                         run.cfg.train.batch_size, run.cfg.train.eval_batches),
                                     at::kCPU);
  EXPECT_NEAR(ev.loss, r.eval.loss, 1e-6);
  EXPECT_EQ(run.cfg.quant.spec.weight.type, bitqat::bitlinear::WeightQuant::kTernary);
  EXPECT_EQ(run.cfg.quant.spec.act.type, bitqat::bitlinear::ActQuant::kPerToken);
  EXPECT_EQ(run.cfg.quant.spec.act.bits, 8);
  EXPECT_EQ(run.cfg.run.run_dir(), out);
  const auto metrics = nlohmann::json::parse(bitqat::core::read_file(out + "/metrics.jsonl"));
  EXPECT_NEAR(metrics["val_loss"].get<double>(), r.eval.loss, 1e-12);
  EXPECT_EQ(metrics["quantized_from"]["step"], 10);

  // The latent weights are the source's, unchanged: quantization happens in the forward pass.
  const auto a =
      bitqat::checkpoints::read_checkpoint(*bitqat::checkpoints::find_latest_checkpoint(src + "/checkpoints"));
  const auto b = bitqat::checkpoints::read_checkpoint(r.checkpoint);
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i)
    EXPECT_TRUE(a.model[i].second.equal(b.model[i].second)) << a.model[i].first;

  // It resumes (a fresh optimizer state at step 0) and serves as init_from.
  bitqat::training::TrainOptions resume;
  resume.resume = true;
  const auto cont = bitqat::training::train(run.cfg, resume);
  EXPECT_EQ(cont.start_step, 0);
  EXPECT_EQ(bitqat::interop::read_init_source(out).kind, bitqat::interop::InitKind::kBitqatRun);

  // Refusals: an output with checkpoints, the source itself.
  auto e = error_of([&] { bitqat::training::quantize_run(src, out, {}, at::kCPU); });
  EXPECT_NE(e.find("--out " + out + " already holds checkpoints"), std::string::npos) << e;
  e = error_of([&] { bitqat::training::quantize_run(src, src, {}, at::kCPU); });
  EXPECT_NE(e.find("is the source run itself"), std::string::npos) << e;
}

TEST_F(QuantizeTest, SetOverridesTheTernaryDefaults) {
  train_fp(4);
  const auto out = runs() + "/pc";
  bitqat::training::quantize_run(runs() + "/fp", out, {"quant.weight.granularity=per_channel"}, at::kCPU);
  const auto cfg = Config::load_file(out + "/config.resolved.yaml");
  EXPECT_EQ(cfg.quant.spec.weight.granularity, bitqat::bitlinear::Granularity::kPerChannel);
  const auto e = error_of(
      [&] { bitqat::training::quantize_run(runs() + "/fp", runs() + "/none", {"quant.include=[nothing]"}, at::kCPU); });
  EXPECT_NE(e.find("select no layer of the model"), std::string::npos) << e;
}

// SRC may be a training config whose init_from is the model; --set applies to that config too, so a
// data path that is not where the config says can be given on the command line.
TEST_F(QuantizeTest, AConfigSourceTakesTheOverrides) {
  train_fp(4);
  const auto yaml = runs() + "/ft.yaml";
  bitqat::core::write_file_atomic(
      yaml, bitqat::testing::tiny_finetune_yaml(runs(), runs() + "/moved.txt", runs() + "/fp", 4, 2));
  const auto out = runs() + "/from_config";
  EXPECT_NE(error_of([&] { bitqat::training::quantize_run(yaml, out, {}, at::kCPU); }).find("moved.txt"),
            std::string::npos);
  const auto r = bitqat::training::quantize_run(yaml, out, {"data.path=" + text_}, at::kCPU);
  // The same model and weights as quantizing the run itself.
  const auto direct = bitqat::training::quantize_run(runs() + "/fp", runs() + "/direct", {}, at::kCPU);
  EXPECT_EQ(r.eval.loss, direct.eval.loss);
  // Each records where its weights came from: the config's model, or the run.
  EXPECT_EQ(Config::load_file(out + "/config.resolved.yaml").init_from, runs() + "/fp");
  EXPECT_EQ(Config::load_file(runs() + "/direct/config.resolved.yaml").init_from, runs() + "/fp");
}

TEST_F(QuantizeTest, ProgressiveFineTuneBeatsDataFreeTernarization) {
  // The claim the fine-tuning recipes rest on, at toy scale with fixed seeds: a full-precision
  // model, ternarized without data, loses much of what it learnt; a short fine-tune that ramps
  // lambda from 0 to 1 recovers more of it.
  const auto fp = train_fp(80);
  ASSERT_TRUE(fp.last_val_loss.has_value());
  const auto dq = bitqat::training::quantize_run(runs() + "/fp", runs() + "/dq", {}, at::kCPU);
  const auto ft = bitqat::training::train(
      Config::load_string(bitqat::testing::tiny_finetune_yaml(runs(), text_, runs() + "/fp", 40, 20), "ft.yaml"));
  ASSERT_TRUE(ft.last_val_loss.has_value());
  std::printf("val_loss: full precision %.4f, data-free ternary %.4f, fine-tuned ternary %.4f\n", *fp.last_val_loss,
              dq.eval.loss, *ft.last_val_loss);
  EXPECT_GT(dq.eval.loss, *fp.last_val_loss);
  EXPECT_LT(*ft.last_val_loss, dq.eval.loss - 0.05);
}

// A DiT run: every block linear becomes ternary (or binary with --set), the embedders and the final
// layer stay full precision, and the reported loss is the held-out flow-matching loss eval measures.
TEST_F(QuantizeTest, DiffusionTransformerRun) {
  bitqat::training::train(Config::load_string(bitqat::testing::tiny_dit_yaml(runs(), "dit", 3), "dit.yaml"));
  const auto r = bitqat::training::quantize_run(runs() + "/dit", runs() + "/dit_q", {}, at::kCPU);
  EXPECT_EQ(r.quantized_layers, (std::vector<std::string>{"blocks.0.adaln", "blocks.0.qkv", "blocks.0.proj",
                                                          "blocks.0.fc1", "blocks.0.fc2"}));
  EXPECT_TRUE(std::isfinite(r.eval.loss));
  auto run = bitqat::training::load_run(runs() + "/dit_q", at::kCPU);
  const auto ev = run.task->evaluate(bitqat::training::open_validation_data(run, {})->val_batches(
                                         run.cfg.train.batch_size, run.cfg.train.eval_batches),
                                     at::kCPU);
  EXPECT_EQ(ev.loss, r.eval.loss);
  const auto b =
      bitqat::training::quantize_run(runs() + "/dit", runs() + "/dit_b",
                                     {"quant.weight.type=binary", "quant.weight.granularity=per_channel"}, at::kCPU);
  EXPECT_EQ(b.quantized_layers.size(), 5u);
  EXPECT_NE(b.eval.loss, r.eval.loss);
  EXPECT_EQ(Config::load_file(runs() + "/dit_b/config.resolved.yaml").quant.spec.weight.type,
            bitqat::bitlinear::WeightQuant::kBinary);
}
