// Throughput of the CPU row kernels behind the quantized linear and RMSNorm (bitlinear/quant_kernels),
// and of the language model's RoPE kernel (models/cpu/lm_kernels), at the quickstart's shapes (2048 tokens x K = 128 or
// 512), against a copy of the same bytes as the memory floor. A program, not a test: the numbers depend on the machine
// and its load.
//
//   row_kernels_bench [--threads 2] [--iters 200]
//
// Prints one line per kernel and shape: median microseconds over --iters calls after 20 warm-up
// calls, the bytes it must read and write, and that traffic's rate next to a copy's of the same shape.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/median_time.hpp"
#include "bitlinear/quant_kernels.hpp"
#include "models/cpu/lm_kernels.hpp"

namespace {

using namespace bitqat::bitlinear;

double median_us(const std::function<void()>& fn, int iters) { return 1e3 * bitqat::bench::median_ms(fn, 20, iters); }

void row(const std::string& name, int64_t m, int64_t k, double bytes, double us, double copy_gbs) {
  const double gbs = bytes / us * 1e-3;
  std::printf("%-22s [%lld, %lld] %9.1f us %8.2f MB %7.1f GB/s (copy %5.1f GB/s: %.2fx its time)\n", name.c_str(),
              static_cast<long long>(m), static_cast<long long>(k), us, bytes * 1e-6, gbs, copy_gbs, copy_gbs / gbs);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, iters = 200;
  CLI::App app{"CPU row kernel throughput"};
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024));
  app.add_option("--iters", iters, "timed calls per kernel")->check(CLI::Range(1, 1000000));
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  at::manual_seed(0);
  const int64_t m = 2048;
  for (const int64_t k : {int64_t{128}, int64_t{512}}) {
    const auto x = at::randn({m, k});
    const auto g = at::randn({m, k});
    const auto w = at::randn({k});
    auto dst = at::empty_like(x);
    const double f = 4.0 * static_cast<double>(m * k);  // bytes of one float [m, k]
    const double copy_us = median_us([&] { dst.copy_(x); }, iters);
    const double copy_gbs = 2 * f / copy_us * 1e-3;
    row("copy", m, k, 2 * f, copy_us, copy_gbs);
    row("quantize_rows", m, k, f + f / 4, median_us([&] { kernels::quantize_rows(x, 1e-5, 8); }, iters), copy_gbs);
    row("rms_norm", m, k, 2 * f, median_us([&] { kernels::rms_norm(x, w, 1e-6); }, iters), copy_gbs);
    const auto r = kernels::rms_norm(x, w, 1e-6).second;
    row("rms_norm_backward", m, k, 3 * f, median_us([&] { kernels::rms_norm_backward(g, x, w, r); }, iters), copy_gbs);
    // The fused input of the exact linears: RMSNorm then codes, and relu^2 first (ffn.down's SubLN).
    row("norm_quantize_rows", m, k, f + f / 4,
        median_us([&] { kernels::norm_quantize_rows(x, 1e-5, 8, false, w, 1e-6); }, iters), copy_gbs);
    row("  relu2", m, k, f + f / 4, median_us([&] { kernels::norm_quantize_rows(x, 1e-5, 8, true, w, 1e-6); }, iters),
        copy_gbs);
    const auto r2 = kernels::norm_quantize_rows(x, 1e-5, 8, true, w, 1e-6).r;
    row("rms_norm_backward relu2", m, k, 3 * f,
        median_us([&] { kernels::rms_norm_backward(g, x, w, r2, true); }, iters), copy_gbs);
    const auto codes = kernels::quantize_rows(x, 1e-5, 8);
    row("dequant_rows", m, k, f + f / 4, median_us([&] { kernels::dequant_rows(codes.codes, codes.scales); }, iters),
        copy_gbs);
    if (k == 128) {  // RoPE on the quickstart's q: [16 x 128 rows, 4 heads, 32]
      const auto cs = at::randn({128, 32});
      const auto sn = at::randn({128, 32});
      auto y = at::empty_like(x);
      const auto& lk = bitqat::models::cpu::lm_kernels();
      row("rope_rows", m, k, 2 * f,
          median_us(
              [&] {
                at::parallel_for(0, m, 16, [&](int64_t b0, int64_t b1) {
                  lk.rope_rows(x.data_ptr<float>(), cs.data_ptr<float>(), sn.data_ptr<float>(), 128, 4, 32, false,
                               y.data_ptr<float>(), b0, b1);
                });
              },
              iters),
          copy_gbs);
    }
    // The epilogue of an [m, k] output: int32 sums in, float out.
    const auto acc = at::randint(-20000, 20000, {m, k}, at::kInt);
    const auto gamma = at::full({k}, 0.02f);
    row("linear_epilogue", m, k, 2 * f,
        median_us([&] { kernels::linear_epilogue({acc}, gamma, 1, codes.scales, at::Tensor()); }, iters), copy_gbs);
    std::printf("\n");
  }
  // The quickstart's largest weight, [512, 128]: its codes and per-tensor gamma (against the copy of
  // the last shape above).
  const auto wt = at::randn({512, 128}) * 0.05;
  auto wdst = at::empty_like(wt);
  const double wf = 4.0 * 512 * 128;
  const double wcopy_us = median_us([&] { wdst.copy_(wt); }, iters);
  row("weight_codes", 512, 128, wf * 1.25, median_us([&] { kernels::weight_codes(wt, 128, true, false, 1e-5); }, iters),
      2 * wf / wcopy_us * 1e-3);
  return 0;
}
