// Opening a run directory (training/run_loader.hpp) as eval, generate and export do: at the lambdas
// the trainer used, without its training data, from any working directory, after a move.
#include "training/run_loader.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "checkpoints/checkpoint.hpp"
#include "tiny_runs.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using bitqat::testing::error_of;
using bitqat::training::Config;
using bitqat::training::load_run;
using bitqat::training::open_validation_data;

namespace {

class RunLoaderTest : public bitqat::testing::TinyRunTest {
 protected:
  // A ternary run whose quantization stays off (lambda 0) or ramps, evaluated at the end.
  std::string train(const std::string& name, int steps, const std::vector<std::string>& sets) {
    auto all = sets;
    all.push_back("run.name=" + name);
    bitqat::training::train(
        Config::load_string(bitqat::testing::tiny_finetune_yaml(runs(), text_, "", steps, 10), "ft.yaml", all));
    return runs() + "/" + name;
  }
  // The val_loss the trainer logged for its last evaluation.
  double logged_val_loss(const std::string& run) {
    std::ifstream in(run + "/metrics.jsonl");
    std::string line;
    double v = std::nan("");
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("val_loss")) v = j["val_loss"].get<double>();
    }
    return v;
  }
  double eval(bitqat::training::LoadedRun& run, const std::vector<std::string>& sets = {}) {
    return run.task
        ->evaluate(open_validation_data(run, sets)->val_batches(run.cfg.train.batch_size, run.cfg.train.eval_batches),
                   at::kCPU)
        .loss;
  }
};

}  // namespace

// The case: a run trained at lambda_w = lambda_a = 0 logged one val_loss and `bitqat eval`
// reported another, because it always evaluated at lambda 1.
TEST_F(RunLoaderTest, EvalReproducesTheLoggedValLossAtTheCheckpointsLambdas) {
  const auto dir = train("zero", 30,
                         {"quant.lambda_w={kind: constant, value: 0}", "quant.lambda_a={kind: constant, value: 0}",
                          "train.eval_every=30"});
  auto run = load_run(dir, at::kCPU);
  EXPECT_EQ(run.lambda_w, 0.0);
  EXPECT_EQ(run.lambda_a, 0.0);
  EXPECT_EQ(eval(run), logged_val_loss(dir));  // exactly: the same model, batches and arithmetic
  bitqat::training::set_run_lambdas(run, 1.0, 1.0);
  EXPECT_GT(std::fabs(eval(run) - logged_val_loss(dir)), 1e-3);  // the fully quantized model differs

  // A ramp (lambda = step / 10): the checkpoint at step 6 was trained last at 0.5, and evaluated so.
  const auto ramp = train("ramp", 6, {"train.eval_every=6"});
  auto r = load_run(ramp, at::kCPU);
  EXPECT_DOUBLE_EQ(r.lambda_w, 0.5);
  EXPECT_DOUBLE_EQ(r.lambda_a, 0.5);
  EXPECT_EQ(eval(r), logged_val_loss(ramp));
}

TEST_F(RunLoaderTest, CheckpointsWithoutRecordedLambdasUseTheRunsSchedules) {
  const auto dir = train("old", 6, {"train.eval_every=6"});
  const auto path = dir + "/checkpoints/step_00000006";
  auto ck = bitqat::checkpoints::read_checkpoint(path);
  ck.state.erase("lambda_w");
  ck.state.erase("lambda_a");
  bitqat::checkpoints::write_checkpoint(dir + "/checkpoints", ck, 1);
  auto run = load_run(dir, at::kCPU);
  EXPECT_DOUBLE_EQ(run.lambda_w, 0.5);  // the linear ramp's value at step 5
  EXPECT_EQ(eval(run), logged_val_loss(dir));
  ck.state["lambda_w"] = "half";
  bitqat::checkpoints::write_checkpoint(dir + "/checkpoints", ck, 1);
  EXPECT_EQ(error_of([&] { load_run(dir, at::kCPU); }),
            path + "/state.json: lambda_w = \"half\": expected a number in [0, 1]");
}

TEST_F(RunLoaderTest, ARunOpensFromAnyDirectoryWithoutItsTrainingData) {
  // Train from the test directory with a relative data path, as a user would.
  const auto cwd = fs::current_path();
  fs::current_path(dir_);
  const auto dir = train("rel", 6, {"data.path=text.txt", "run.dir=runs", "train.eval_every=6"});
  fs::current_path(fs::temp_directory_path());
  const auto abs_run = (dir_ / "runs/rel").string();
  {
    auto run = load_run(abs_run, at::kCPU);  // from elsewhere: the resolved config holds absolute paths
    EXPECT_EQ(eval(run), logged_val_loss(abs_run));
  }
  fs::current_path(cwd);

  // Move the run and the data: everything but the validation data still opens.
  const auto moved = (dir_ / "moved_run").string();
  fs::rename(abs_run, moved);
  const auto new_text = (dir_ / "elsewhere.txt").string();
  fs::rename(text_, new_text);
  auto run = load_run(moved, at::kCPU);  // no data read
  EXPECT_EQ(run.step, 6);
  const auto msg = error_of([&] { open_validation_data(run, {}); });
  EXPECT_NE(msg.find(moved + "/config.resolved.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.path = " + text_ + ": file not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("point at it with --set data.path=..."), std::string::npos) << msg;
  EXPECT_EQ(eval(run, {"data.path=" + new_text}), logged_val_loss(moved));
  EXPECT_EQ(error_of([&] { open_validation_data(run, {"model.dim=64"}); }),
            "--set model.dim=64: only data.* keys can be overridden here (where the validation data is); the model "
            "and its quantization are the checkpoint's");
}

TEST_F(RunLoaderTest, EvalReadsOnlyTheValidationSplit) {
  const auto dir = train("val", 4, {"train.eval_every=4"});
  // Overwrite the training part of the text with bytes the model never saw: the validation split
  // (the last 10%) is unchanged, and so is the loss.
  auto bytes = bitqat::core::read_file(text_);
  const size_t n_val = static_cast<size_t>(static_cast<double>(bytes.size()) * 0.1);
  std::fill(bytes.begin(), bytes.end() - static_cast<std::ptrdiff_t>(n_val), 'Z');
  bitqat::core::write_file_atomic(text_, bytes);
  auto run = load_run(dir, at::kCPU);
  EXPECT_EQ(eval(run), logged_val_loss(dir));
  const auto src = open_validation_data(run, {});
  EXPECT_EQ(src->train_size(), 0);
  EXPECT_THROW(src->train_batch(0, 0, 0, 1, 1, 1), std::logic_error);
}
