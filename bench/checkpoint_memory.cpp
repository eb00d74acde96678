// Activation memory and step time of a BitLM training step on the CPU under each activation
// checkpointing policy (train.activation_checkpointing: none, full, {every_n: 2}), measured by a
// counting allocator in front of LibTorch's CPU allocator. One JSON line per policy:
//   graph_bytes   live bytes after the forward pass less those before it: what the autograd graph
//                 keeps for the backward pass (and the loss)
//   peak_bytes    the peak of live bytes over forward and backward, less the bytes before the forward
//                 (the weights and their allocated gradients)
//   step_ms       the median wall time of forward + backward over --iters steps
//   max_grad_diff the largest absolute difference of any parameter gradient from the policy none's
//                 (0: bit-identical)
//
//   build/bench/checkpoint_memory [--dim 256] [--layers 8] [--heads 4] [--seq 256] [--batch 8]
//                                 [--threads 2] [--iters 5]
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/counting_allocator.hpp"
#include "bench/median_time.hpp"
#include "bitlinear/quant_spec.hpp"
#include "models/lm.hpp"
#include "models/recompute.hpp"

int main(int argc, char** argv) {
  CLI::App app("Activation memory of a BitLM step per activation checkpointing policy (CPU)");
  int64_t dim = 256, layers = 8, heads = 4, seq = 256, batch = 8;
  int threads = 2, iters = 5;
  app.add_option("--dim", dim, "model width")->check(CLI::Range(16, 1 << 14));
  app.add_option("--layers", layers, "transformer blocks")->check(CLI::Range(1, 256));
  app.add_option("--heads", heads, "attention heads")->check(CLI::Range(1, 256));
  app.add_option("--seq", seq, "tokens per sequence")->check(CLI::Range(1, 1 << 14));
  app.add_option("--batch", batch, "sequences per step")->check(CLI::Range(1, 1 << 12));
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024));
  app.add_option("--iters", iters, "timed steps per policy")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);

  static bitqat::bench::CountingAllocator counter(c10::GetCPUAllocator());
  bitqat::bench::CountingAllocator::instance = &counter;
  c10::SetCPUAllocator(&counter, /*priority=*/100);

  bitqat::models::LMConfig c;
  c.vocab_size = 256;
  c.dim = dim;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = heads;
  c.ffn_dim = 4 * dim;  // relu2's default
  c.max_seq_len = seq;
  at::manual_seed(1);
  // Ternary weights and int8 activations at lambda 1.
  bitqat::models::BitLM lm(c, bitqat::bitlinear::QuantSpec{}, std::vector<std::string>{"*"},
                           std::vector<std::string>{});
  const auto tokens = at::randint(0, c.vocab_size, {batch, seq}, at::kLong);
  const auto targets = at::randint(0, c.vocab_size, {batch, seq}, at::kLong);

  std::vector<at::Tensor> reference;
  const std::vector<std::pair<std::string, bitqat::models::Checkpointing>> policies = {
      {"none", {0}}, {"full", {1}}, {"every_n: 2", {2}}};
  for (const auto& [name, policy] : policies) {
    lm->block_runner.checkpointing = policy;
    auto step = [&] {
      lm->zero_grad(/*set_to_none=*/false);
      lm->loss(tokens, targets).backward();
    };
    step();  // gradients allocated, kernels warm
    lm->zero_grad(/*set_to_none=*/false);
    const int64_t before = counter.live();
    counter.reset_peak();
    auto loss = lm->loss(tokens, targets);
    const int64_t graph = counter.live() - before;
    loss.backward();
    loss = at::Tensor();
    const int64_t peak = counter.peak() - before;
    double max_diff = 0.0;
    const auto params = lm->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      if (reference.size() < params.size()) {
        reference.push_back(params[i].grad().clone());
      } else {
        max_diff = std::max(max_diff, (params[i].grad() - reference[i]).abs().max().item<double>());
      }
    }
    const double ms = bitqat::bench::median_ms(step, 1, iters);
    nlohmann::json j = {{"policy", name},       {"dim", dim},
                        {"layers", layers},     {"seq", seq},
                        {"batch", batch},       {"threads", threads},
                        {"graph_bytes", graph}, {"peak_bytes", peak},
                        {"step_ms", ms},        {"max_grad_diff", max_diff}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}
