// init_from: fresh runs start from a bitqat run, checkpoint, safetensors file or a Hugging Face
// Llama directory; resumed runs never re-read it; mismatched models and unknown paths are refused
// with the differences named.
#include "interop/init_source.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "data/source.hpp"
#include "interop/hf_llama.hpp"
#include "tests/training/tiny_runs.hpp"
#include "training/task.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using bitqat::testing::error_of;
using bitqat::training::Config;

namespace {

class InitFromTest : public bitqat::testing::TinyRunTest {
 protected:
  // Trains the full-precision source run (runs/fp) once.
  std::string train_source(int steps = 20) {
    bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, steps), "fp.yaml"));
    return runs() + "/fp";
  }
  Config finetune(const std::string& init_from, int steps, const std::vector<std::string>& sets = {}) {
    return Config::load_string(bitqat::testing::tiny_finetune_yaml(runs(), text_, init_from, steps, 10), "ft.yaml",
                               sets);
  }
  // The model of `cfg`, built as the trainer builds it.
  std::unique_ptr<bitqat::training::Task> task(const Config& cfg) {
    return bitqat::training::make_task(cfg, at::Device(at::kCPU));
  }
  std::vector<double> losses(const std::string& run) {
    std::vector<double> out;
    std::ifstream in(runs() + "/" + run + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss") && j["loss"].is_number()) out.push_back(j["loss"].get<double>());
    }
    return out;
  }
};

void expect_same_tensors(torch::nn::Module& m, const bitqat::checkpoints::NamedTensors& want) {
  const auto params = m.named_parameters(true);
  size_t n = 0;
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_TRUE(params[name].equal(t)) << name;
    ++n;
  }
  EXPECT_EQ(n, params.size());
}

}  // namespace

TEST_F(InitFromTest, RunDirectoryCheckpointAndSafetensorsFile) {
  const auto src = train_source();
  const auto ck_dir = *bitqat::checkpoints::find_latest_checkpoint(src + "/checkpoints");
  const auto ck = bitqat::checkpoints::read_checkpoint(ck_dir);
  for (const auto& path : {src, ck_dir, ck_dir + "/model.safetensors"}) {
    auto t = task(finetune(path, 2));
    const auto text = bitqat::interop::init_model_from(path, t->module());
    EXPECT_NE(text.find("initialised"), std::string::npos) << text;
    expect_same_tensors(t->module(), ck.model);
  }
  EXPECT_EQ(bitqat::interop::read_init_source(src).kind, bitqat::interop::InitKind::kBitqatRun);
  EXPECT_EQ(bitqat::interop::read_init_source(ck_dir).kind, bitqat::interop::InitKind::kBitqatCheckpoint);
  EXPECT_TRUE(bitqat::interop::read_init_source(ck_dir).lm.has_value());  // the run's config, two levels up
  EXPECT_TRUE(bitqat::interop::read_init_source(ck_dir + "/").lm.has_value());
  EXPECT_EQ(bitqat::interop::read_init_source(ck_dir + "/model.safetensors").kind,
            bitqat::interop::InitKind::kSafetensors);
}

// A source without learned scales (a full-precision run) initialises them: each is the absmean of its
// row of the loaded weights, not of the random initialisation; a source with them gives its own.
TEST_F(InitFromTest, LearnedScalesStartAtTheAbsmeanOfTheLoadedWeights) {
  const auto src = train_source();
  const std::vector<std::string> learned = {"quant.weight.granularity=per_channel", "quant.weight.scale=learned"};
  auto t = task(finetune(src, 2, learned));
  const auto text = bitqat::interop::init_model_from(src, t->module());
  EXPECT_NE(text.find("12 learned weight scales set to the absmean of their rows"), std::string::npos) << text;
  const auto scales = bitqat::bitlinear::learned_scales(t->module());
  ASSERT_EQ(scales.size(), 12u);
  for (const auto& [name, l] : scales) {
    // By hand: mean |w| of each row, in double, rounded to float32 once.
    const auto want = l->weight.detach().to(at::kDouble).abs().mean(1).to(at::kFloat);
    EXPECT_TRUE(l->weight_scale.detach().allclose(want, 1e-6, 0)) << name;
  }
  bitqat::training::train(finetune(src, 2, {"run.name=ft_learned", "quant.weight.granularity=per_channel",
                                            "quant.weight.scale=learned"}));
  auto again = task(finetune(src, 2, learned));
  const auto from_run = bitqat::interop::init_model_from(runs() + "/ft_learned", again->module());
  EXPECT_EQ(from_run.find("learned weight scales set"), std::string::npos) << from_run;  // taken from the run
  const auto ck = bitqat::checkpoints::read_checkpoint(
      *bitqat::checkpoints::find_latest_checkpoint(runs() + "/ft_learned/checkpoints"));
  expect_same_tensors(again->module(), ck.model);
}

TEST_F(InitFromTest, TrainerStartsFromTheSourceAndResumeDoesNotRereadIt) {
  const auto src = train_source();
  bitqat::training::train(finetune(src, 2, {"train.log_every=1"}));
  bitqat::training::train(finetune("", 2, {"train.log_every=1", "run.name=scratch"}));
  const auto ft = losses("ft"), scratch = losses("scratch");
  ASSERT_EQ(ft.size(), 2u);
  ASSERT_EQ(scratch.size(), 2u);
  // Step 1 runs at lambda 0: the source's full-precision function, far below a random model's ln 256.
  EXPECT_NEAR(scratch[0], std::log(256.0), 0.3);
  EXPECT_LT(ft[0], scratch[0] - 1.5) << "fine-tune " << ft[0] << " scratch " << scratch[0];

  fs::remove_all(src);  // a resume reads its own checkpoint, never init_from
  bitqat::training::TrainOptions resume;
  resume.resume = true;
  const auto r = bitqat::training::train(finetune(src, 4), resume);
  EXPECT_EQ(r.start_step, 2);
  EXPECT_EQ(r.final_step, 4);
}

TEST_F(InitFromTest, MismatchedModelsAndBadPathsAreRefused) {
  const auto src = train_source(2);
  auto e = error_of([&] { bitqat::training::train(finetune(src, 1, {"model.dim=64"})); });
  EXPECT_NE(e.find("ft.yaml:3: init_from = " + src + ": the config's model does not match the bitqat-run source"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("model.dim = 64 (source: 32)"), std::string::npos) << e;
  // Same tensors, different function: caught by the config comparison, not by shapes.
  e = error_of([&] { bitqat::training::train(finetune(src, 1, {"model.ffn=relu2_glu", "run.name=glu"})); });
  EXPECT_NE(e.find("model.ffn = relu2_glu (source: relu2)"), std::string::npos) << e;

  e = error_of([&] { bitqat::interop::read_init_source(runs() + "/nope", "x.yaml:3: init_from"); });
  EXPECT_NE(e.find("x.yaml:3: init_from = " + runs() + "/nope: no such file or directory"), std::string::npos) << e;
  e = error_of([&] { bitqat::interop::read_init_source(dir_.string()); });
  EXPECT_NE(e.find("neither a Hugging Face model (config.json), a bitqat run"), std::string::npos) << e;
  fs::create_directories(dir_ / "empty_run");
  bitqat::core::write_file_atomic((dir_ / "empty_run/config.resolved.yaml").string(), "{}\n");
  e = error_of([&] { bitqat::interop::read_init_source((dir_ / "empty_run").string()); });
  EXPECT_NE(e.find("a bitqat run directory without a complete checkpoint"), std::string::npos) << e;
  e = error_of([&] { bitqat::interop::read_init_source(text_); });
  EXPECT_NE(e.find(text_ + ": not a valid safetensors file"), std::string::npos) << e;
}

TEST_F(InitFromTest, HuggingFaceLlamaDirectory) {
  const std::string python = BITQAT_PYTHON;
  ASSERT_FALSE(python.empty()) << "configure with -DPython3_EXECUTABLE=.venv/bin/python";
  const auto hf = (dir_ / "llama").string();
  const auto cmd =
      fmt::format("'{}' '{}/tests/interop/make_tiny_llama.py' '{}' --vocab 256", python, BITQAT_SOURCE_DIR, hf);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  // The default (BitNet-style) model section does not fit; the error gives the one that does.
  auto e = error_of([&] { bitqat::training::train(finetune(hf, 1)); });
  EXPECT_NE(e.find("does not match the hf-llama source"), std::string::npos) << e;
  // SubLN alone is no difference: it is inserted (below).
  EXPECT_EQ(e.find("model.sub_norm"), std::string::npos) << e;
  EXPECT_NE(e.find("this checkpoint needs model: {kind: lm, vocab_size: 256, dim: 32, n_layers: 2, n_heads: 4, "
                   "n_kv_heads: 2, ffn: swiglu, ffn_dim: 48, sub_norm: false"),
            std::string::npos)
      << e;

  const std::vector<std::string> llama = {
      "model={kind: lm, vocab_size: 256, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn: swiglu, ffn_dim: 48, "
      "sub_norm: false, max_seq_len: 64, rope_theta: 500, norm_eps: 1.0e-5, tie_embeddings: false}",
      "train.log_every=1"};
  auto t = task(finetune(hf, 2, llama));
  bitqat::interop::init_model_from(hf, t->module());
  const auto ck = bitqat::interop::load_hf_llama(hf);
  bitqat::checkpoints::NamedTensors want;
  for (const auto& [name, lazy] : ck.tensors) want.emplace_back(name, lazy.read());
  expect_same_tensors(t->module(), want);
  const auto r = bitqat::training::train(finetune(hf, 2, llama));
  EXPECT_EQ(r.final_step, 2);
  EXPECT_TRUE(std::isfinite(r.last_loss));

  // SubLN inserted: the source's tensors, and the 2 x 2 new norms at ones.
  auto with_subln = llama;
  with_subln.push_back("model.sub_norm=true");
  with_subln.push_back("run.name=subln");
  auto s = task(finetune(hf, 2, with_subln));
  const auto text = bitqat::interop::init_model_from(hf, s->module());
  EXPECT_NE(text.find("inserted SubLN: 4 new RMSNorm weights before attn.o and ffn.down, initialised to ones"),
            std::string::npos)
      << text;
  const auto params = s->module().named_parameters(true);
  for (const auto& [name, t] : want) EXPECT_TRUE(params[name].equal(t)) << name;
  for (const char* name : {"layers.0.attn.o.norm.weight", "layers.1.ffn.down.norm.weight"}) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_TRUE(params[name].eq(1.0f).all().item<bool>()) << name;
  }
  EXPECT_EQ(params.size(), want.size() + 4);
  const auto rs = bitqat::training::train(finetune(hf, 2, with_subln));
  EXPECT_EQ(rs.final_step, 2);
  EXPECT_TRUE(std::isfinite(rs.last_loss));
}
