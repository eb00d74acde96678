// The packed export: a tiny trained run is exported, reopened through load_run (as eval and
// generate do), and must compute what the fully quantized fake-quant model computes, from 2-bit
// weights at least 7.7x smaller than bf16.
#include "interop/export_packed.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "bitlinear/convert.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/generate.hpp"
#include "models/lm.hpp"
#include "tests/temp_dir.hpp"
#include "training/run_loader.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using namespace bitqat;

namespace {

class PackedExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = bitqat::testing::fresh_test_dir("packed");
    std::string s;
    for (int i = 0; i < 200; ++i) s += fmt::format("And the {} said unto them, {} times.\n", i % 3 ? "man" : "LORD", i);
    core::write_file_atomic((dir_ / "t.txt").string(), s);
    // K = 128 and 256: no row padding, so the ratio is the format's own.
    const auto yaml = fmt::format(R"(
run: {{name: tiny, dir: {}, seed: 3}}
model: {{kind: lm, dim: 128, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn: relu2_glu, ffn_dim: 256, max_seq_len: 32}}
quant:
  weight: {{type: ternary, granularity: per_tensor}}
  activation: {{type: per_token, bits: 8}}
  include: ["layers.*"]
data: {{kind: text, path: {}, seq_len: 32, val_fraction: 0.1}}
optim:
  lr: {{kind: constant, value: 0.01}}
train: {{steps: 3, batch_size: 2, log_every: 1, eval_every: 3, eval_batches: 2}}
checkpoint: {{every: 3}}
device: {{type: cpu, threads: 1}}
)",
                                  (dir_ / "runs").string(), (dir_ / "t.txt").string());
    training::train(training::Config::load_string(yaml, "tiny.yaml"));
    run_dir_ = (dir_ / "runs/tiny").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  std::string run_dir_;
};

at::Tensor logits_of(training::LoadedRun& run, const at::Tensor& tokens) {
  at::NoGradGuard g;
  auto lm = std::dynamic_pointer_cast<models::BitLMImpl>(run.task->module_ptr());
  lm->eval();
  return lm->forward(tokens);
}

}  // namespace

TEST_F(PackedExportTest, EvalAndGenerateMatchTheFakeQuantModelFromAFileEightTimesSmaller) {
  auto ref = training::load_run(run_dir_, at::Device(at::kCPU));
  bitlinear::set_quant_lambdas(ref.task->module(), 1.0, 1.0);  // the export is the fully quantized model
  const auto tokens = at::randint(0, 256, {2, 24}, at::kLong);
  const auto want = logits_of(ref, tokens);
  const auto val = training::open_validation_data(ref, {})->val_batches(2, 2);
  const auto want_eval = ref.task->evaluate(val, at::Device(at::kCPU));

  auto src = training::load_run(run_dir_, at::Device(at::kCPU));
  const std::string out = (dir_ / "packed").string();
  const auto stats = interop::export_packed(src.task->module(), core::to_yaml_string(src.cfg.resolved()),
                                            src.checkpoint, src.step, out, run_dir_);
  EXPECT_EQ(stats.layers, 14);  // 2 blocks x (q, k, v, o, gate, up, down)
  // 2 bits per weight plus one float32 scale per layer.
  std::printf("packed %lld bytes vs bf16 %lld bytes: %.3fx\n", static_cast<long long>(stats.packed_bytes),
              static_cast<long long>(stats.bf16_bytes), stats.ratio());
  EXPECT_GE(stats.ratio(), 7.7);
  EXPECT_TRUE(interop::is_packed_export(out));
  EXPECT_FALSE(interop::is_packed_export(run_dir_));

  auto packed = training::load_run(out, at::Device(at::kCPU));
  EXPECT_EQ(packed.step, 3);
  const auto params = packed.task->module().named_parameters();
  const auto buffers = packed.task->module().named_buffers();
  EXPECT_FALSE(params.contains("layers.0.attn.q.weight"));  // no latent weights
  EXPECT_FALSE(params.contains("layers.0.attn.o.norm.weight"));
  EXPECT_TRUE(buffers.contains("layers.0.attn.q.packed.packed"));
  EXPECT_TRUE(buffers.contains("layers.0.attn.o.packed.norm_weight"));
  EXPECT_EQ(interop::packed_stats(packed.task->module()).packed_bytes, stats.packed_bytes);

  // The codes first: every packed layer holds exactly the codes and scales of the trained layer.
  auto ref_lm = std::dynamic_pointer_cast<models::BitLMImpl>(ref.task->module_ptr());
  auto packed_lm = std::dynamic_pointer_cast<models::BitLMImpl>(packed.task->module_ptr());
  for (const auto& name : bitlinear::quantized_layer_names(*ref_lm)) {
    const auto* l = ref_lm->named_modules()[name]->as<bitlinear::BitLinearImpl>();
    const auto* p = packed_lm->named_modules()[name + ".packed"]->as<bitlinear::ops::PackedBitLinearImpl>();
    ASSERT_NE(p, nullptr) << name;
    const auto q = l->quantized_weight();
    bitlinear::ops::PackedTernary pt;
    pt.packed = p->packed;
    pt.n = p->out_features;
    pt.k = p->in_features;
    EXPECT_TRUE(bitlinear::ops::unpack_codes(pt).equal(q.codes)) << name;
    EXPECT_TRUE(p->scales.equal(q.scales.to(at::kFloat))) << name;
  }
  // Then the outputs. Every layer computes the same operations on both sides: the same SubLN and
  // activation codes (one function, cuda/quant_codes.hpp), exact integer sums of code products, and
  // the scales applied in the same order (bitlinear/quantized_linear.hpp); everything else in the
  // model is the same code. So the bound is 0: the logits are bit-identical, on every instruction set.
  const auto got = logits_of(packed, tokens);
  const double diff = (got - want).abs().max().item<double>();
  std::printf("packed vs fake-quant logits: max |diff| %.3g (logit range %.3g)\n", diff,
              want.abs().max().item<double>());
  EXPECT_EQ(diff, 0.0);
  const auto ev = packed.task->evaluate(val, at::Device(at::kCPU));
  EXPECT_EQ(ev.loss, want_eval.loss);

  const std::vector<int64_t> prompt = {'A', 'n', 'd', ' '};
  EXPECT_EQ(models::generate(*packed_lm, prompt, 16, 0.0, 0, 1), models::generate(*ref_lm, prompt, 16, 0.0, 0, 1));
}

TEST_F(PackedExportTest, RefusesExistingOutputAndCorruptedFiles) {
  auto src = training::load_run(run_dir_, at::Device(at::kCPU));
  const std::string out = (dir_ / "packed").string();
  fs::create_directories(out);
  EXPECT_THROW(interop::export_packed(src.task->module(), core::to_yaml_string(src.cfg.resolved()), src.checkpoint,
                                      src.step, out, run_dir_),
               core::UserError);
  fs::remove_all(out);
  interop::export_packed(src.task->module(), core::to_yaml_string(src.cfg.resolved()), src.checkpoint, src.step, out,
                         run_dir_);
  auto bytes = core::read_file(out + "/model.safetensors");
  bytes[bytes.size() - 3] ^= 0x5a;
  core::write_file_atomic(out + "/model.safetensors", bytes);
  try {
    training::load_run(out, at::Device(at::kCPU));
    FAIL() << "a corrupted export loaded";
  } catch (const core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("corrupted"), std::string::npos) << e.what();
  }
}
