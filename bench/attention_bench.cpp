// Causal attention forward + backward on the CPU: bitqat's kernels (models/attention.hpp's
// causal_attention_cpu, the variant for LibTorch's CPU capability: set ATEN_CPU_CAPABILITY=avx2 or
// default to time the others) against LibTorch's at::scaled_dot_product_attention (its
// flash-attention CPU kernel), float32, at a fixed token count (B * T = --tokens) for several lengths
// and head sizes. A program, not a test.
//
//   attention_bench [--threads 2] [--iters 30] [--tokens 2048] [--heads 4]
//
// Prints per shape the median milliseconds of forward and of backward over --iters calls after 5
// warm-up calls, for both, ATen's time over bitqat's, and whether causal_attention takes the
// kernels for that shape on this capability. ATen's products call MKL, which picks its own
// instruction set: with ATEN_CPU_CAPABILITY=avx2 also set MKL_ENABLE_INSTRUCTIONS=AVX2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "bench/median_time.hpp"
#include "models/attention.hpp"
#include "models/cpu/attention_kernels.hpp"

namespace {

struct Times {
  double fwd, bwd;
};

// Forward alone, then forward + backward minus the forward.
Times time_fn(const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>& attn,
              const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& go, int iters) {
  const double fwd = bitqat::bench::median_ms(
      [&] {
        at::NoGradGuard ng;
        attn(q, k, v);
      },
      5, iters);
  const double both = bitqat::bench::median_ms(
      [&] {
        const auto o = attn(q, k, v);
        torch::autograd::grad({o}, {q, k, v}, {go});
      },
      5, iters);
  return {fwd, both - fwd};
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, iters = 30;
  int64_t tokens = 2048, heads = 4;
  CLI::App app{"CPU causal attention: bitqat kernels against at::scaled_dot_product_attention"};
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024));
  app.add_option("--iters", iters, "timed calls")->check(CLI::Range(1, 100000));
  app.add_option("--tokens", tokens, "B * T")->check(CLI::Range(1024, 1 << 20));
  app.add_option("--heads", heads, "heads")->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  at::manual_seed(0);
  std::printf("bitqat kernels: the %s variant\n", bitqat::models::cpu::attention_kernels().isa);
  std::printf("%-6s %-4s %-3s | %9s %9s | %9s %9s | %s | %s\n", "T", "d", "B", "ours fwd", "ours bwd", "aten fwd",
              "aten bwd", "aten / ours (fwd+bwd)", "causal_attention runs ours");
  for (const int64_t d : {32, 64, 128}) {
    for (const int64_t T : {64, 128, 256, 512, 1024}) {
      const int64_t B = std::max<int64_t>(1, tokens / T);
      const auto q = at::randn({B, T, heads, d}).requires_grad_(), k = at::randn({B, T, heads, d}).requires_grad_();
      const auto v = at::randn({B, T, heads, d}).requires_grad_(), go = at::randn({B, T, heads, d});
      const auto ours = time_fn(bitqat::models::causal_attention_cpu, q, k, v, go, iters);
      const auto aten = time_fn(
          [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
            return at::scaled_dot_product_attention(a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), {}, 0.0,
                                                    true)
                .transpose(1, 2);
          },
          q, k, v, go, iters);
      std::printf("%-6lld %-4lld %-3lld | %9.3f %9.3f | %9.3f %9.3f | %21.2f | %s\n", static_cast<long long>(T),
                  static_cast<long long>(d), static_cast<long long>(B), ours.fwd, ours.bwd, aten.fwd, aten.bwd,
                  (aten.fwd + aten.bwd) / (ours.fwd + ours.bwd),
                  bitqat::models::causal_attention_uses_cpu_kernels(q, k, v) ? "yes" : "no");
    }
  }
}
