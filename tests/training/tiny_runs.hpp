// Shared by the init_from, quantize and image-generation tests: a learnable text file, tiny byte-level
// LM configs (a full-precision source and a ternary fine-tune of it) and a tiny Fashion-MNIST DiT that
// train in a second or two.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "tests/temp_dir.hpp"
#include "tests/user_error.hpp"

namespace bitqat::testing {

inline std::string tiny_fp_yaml(const std::string& runs, const std::string& text, int steps) {
  return fmt::format(R"(
run: {{name: fp, dir: {}, seed: 7}}
model: {{kind: lm, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 64, max_seq_len: 32}}
quant:
  weight: {{type: none}}
  activation: {{type: none}}
  include: ["layers.*"]
data: {{kind: text, path: {}, seq_len: 32, val_fraction: 0.1}}
optim:
  lr: {{kind: warmup_cosine, peak: 0.01, warmup_steps: 2}}
train: {{steps: {}, batch_size: 8, log_every: 10, eval_every: 0, eval_batches: 4}}
checkpoint: {{every: 0, keep_last: 1}}
device: {{type: cpu, threads: 1}}
)",
                     runs, text, steps);
}

// Progressive fine-tune of tiny_fp_yaml's model: ternary weights, 8-bit activations, lambda_w and
// lambda_a ramped linearly from 0 to 1 over the first `ramp` steps. An empty init_from starts from a
// random initialisation (the line stays, as a comment, so that line numbers do not move).
inline std::string tiny_finetune_yaml(const std::string& runs, const std::string& text, const std::string& init_from,
                                      int steps, int ramp) {
  return fmt::format(R"(
run: {{name: ft, dir: {}, seed: 7}}
{}
model: {{kind: lm, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 64, max_seq_len: 32}}
quant:
  weight: {{type: ternary, granularity: per_tensor}}
  activation: {{type: per_token, bits: 8}}
  include: ["layers.*"]
  lambda_w: {{kind: linear, end: {}}}
  lambda_a: {{kind: linear, end: {}}}
data: {{kind: text, path: {}, seq_len: 32, val_fraction: 0.1}}
optim:
  lr: {{kind: warmup_cosine, peak: 0.005, warmup_steps: 1}}
train: {{steps: {}, batch_size: 8, log_every: 10, eval_every: 0, eval_batches: 4}}
checkpoint: {{every: 0, keep_last: 1}}
device: {{type: cpu, threads: 1}}
)",
                     runs, init_from.empty() ? "# no init_from" : "init_from: " + init_from, ramp, ramp, text, steps);
}

// A tiny class-conditional DiT on Fashion-MNIST (Debian's dataset-fashion-mnist): 16 tokens of 7 x 7
// patches, one block of width 16. `quant` is the quant section's weight and activation lines.
inline std::string tiny_dit_yaml(const std::string& runs, const std::string& name, int steps,
                                 const std::string& quant = "weight: {type: none}\n  activation: {type: none}") {
  return fmt::format(R"(
run: {{name: {}, dir: {}, seed: 5}}
model: {{kind: dit, patch_size: 7, dim: 16, n_layers: 1, n_heads: 2, mlp_dim: 32, freq_dim: 16}}
quant:
  {}
  include: ["blocks.*"]
data: {{kind: fashion_mnist}}
optim:
  lr: {{kind: constant, value: 0.003}}
train: {{steps: {}, batch_size: 8, log_every: 1, eval_every: 0, eval_batches: 2}}
checkpoint: {{every: 0, keep_last: 1}}
device: {{type: cpu, threads: 1}}
)",
                     name, runs, quant, steps);
}

// A temporary directory per test holding text.txt: a repeated verse-like pattern with variation.
class TinyRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = bitqat::testing::fresh_test_dir("run");
    text_ = (dir_ / "text.txt").string();
    std::string s;
    for (int i = 0; i < 400; ++i)
      s += fmt::format("And the {} said unto them, {} times.\n", i % 7 == 0 ? "LORD" : "man", i % 13);
    core::write_file_atomic(text_, s);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string runs() const { return (dir_ / "runs").string(); }

  std::filesystem::path dir_;
  std::string text_;
};

}  // namespace bitqat::testing
