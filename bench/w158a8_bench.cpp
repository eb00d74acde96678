// Benchmarks of the W1.58A8 path (a program, not a test):
//   w158a8_bench kernels OUT_DIR   our matmul (alone and with activation quantization) against
//                                  cuBLAS bf16 (at::matmul) in the same run, CUDA events after
//                                  warm-up, weights rotated through > 200 MB so L2 never holds them
//   w158a8_bench train OUT_DIR     one QAT training step of a GPU-sized LM: int8 forward vs the
//                                  fake-quant bf16 path vs the plain bf16 model (tokens/s, peak memory)
//   w158a8_bench memory OUT_DIR    inference bytes of packed ternary linear layers vs bf16 (any machine)
// Results are printed and written to OUT_DIR as CSV.
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bitlinear/convert.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "bitlinear/ops/w158a8_ops.hpp"
#include "models/lm.hpp"
#include "training/optimizer.hpp"

namespace {

using namespace bitqat;

// H100 SXM ceilings (REFERENCE.md section 3): measured copy bandwidth, datasheet dense peaks.
constexpr double kBandwidth = 3.0e12, kPeakInt8 = 1979e12, kPeakBf16 = 989e12;

template <class F>
double time_us(F&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn(i);
  auto stream = at::cuda::getCurrentCUDAStream();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, stream);
  for (int i = 0; i < iters; ++i) fn(warmup + i);
  cudaEventRecord(b, stream);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * ms / iters;
}

int kernels(const std::string& out_dir) {
  const auto dev = at::Device(at::kCUDA, 0);
  std::ofstream csv(out_dir + "/kernels.csv");
  csv << "M,N,K,us_ours,us_ours_with_quant,us_cublas_bf16,gbps_ours,tops_ours,speedup,speedup_with_quant,"
         "floor_us_w2a8,floor_fraction,floor_us_bf16\n";
  std::printf("%6s %6s %6s | %9s %9s %9s | %8s %8s | %7s %7s | %6s\n", "M", "N", "K", "ours us", "+quant us", "bf16 us",
              "GB/s", "TOP/s", "speedup", "w/quant", "floor");
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {14336, 4096}, {4096, 14336}}) {
    const int64_t bf16_bytes = n * k * 2;
    const int copies = static_cast<int>(std::max<int64_t>(2, (200ll << 20) / bf16_bytes + 1));
    std::vector<at::Tensor> wb;
    std::vector<bitlinear::ops::PackedTernary> wp;
    for (int c = 0; c < copies; ++c) {
      const auto w = at::randn({n, k}, at::TensorOptions().device(dev));
      wb.push_back(w.to(at::kBFloat16));
      wp.push_back(bitlinear::ops::pack_ternary(w, bitlinear::Granularity::kPerTensor));
    }
    const int packed_copies = static_cast<int>(std::max<int64_t>(2, (200ll << 20) / wp[0].bytes() + 1));
    while (static_cast<int>(wp.size()) < packed_copies) wp.push_back(wp[wp.size() % copies]);
    // Distinct packed buffers for rotation (copies of the first ones are real copies).
    for (size_t c = static_cast<size_t>(copies); c < wp.size(); ++c) wp[c].packed = wp[c].packed.clone();
    for (int64_t m : {1, 4, 16, 64, 128, 512, 4096}) {
      const auto x = at::randn({m, k}, at::TensorOptions().device(dev).dtype(at::kBFloat16));
      const auto xq = bitlinear::ops::quantize_activations_int8(x);
      const at::Tensor none;
      const double ours =
          time_us([&](int i) { bitlinear::ops::w158a8_matmul(xq, wp[i % wp.size()], none, at::kBFloat16); }, 10, 50);
      const double ours_q = time_us(
          [&](int i) {
            bitlinear::ops::w158a8_matmul(bitlinear::ops::quantize_activations_int8(x), wp[i % wp.size()], none,
                                          at::kBFloat16);
          },
          10, 50);
      const double bf16 = time_us([&](int i) { at::matmul(x, wb[i % wb.size()].t()); }, 10, 50);
      const double kp = static_cast<double>((k + 127) / 128 * 128);
      const double bytes = n * kp / 4 + m * kp + m * n * 2.0;
      const double ops = 2.0 * m * n * k;
      const double floor = std::max(bytes / kBandwidth, ops / kPeakInt8) * 1e6;
      const double floor_bf16 = std::max((n * k * 2.0 + m * k * 2.0 + m * n * 2.0) / kBandwidth, ops / kPeakBf16) * 1e6;
      std::printf("%6lld %6lld %6lld | %9.2f %9.2f %9.2f | %8.0f %8.1f | %6.2fx %6.2fx | %5.0f%%\n",
                  static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ours, ours_q, bf16,
                  bytes / ours / 1e3, ops / ours / 1e6, bf16 / ours, bf16 / ours_q, 100.0 * floor / ours);
      csv << fmt::format("{},{},{},{:.3f},{:.3f},{:.3f},{:.1f},{:.2f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f}\n", m, n, k,
                         ours, ours_q, bf16, bytes / ours / 1e3, ops / ours / 1e6, bf16 / ours, bf16 / ours_q, floor,
                         floor / ours, floor_bf16);
    }
  }
  return 0;
}

int train(const std::string& out_dir) {
  const auto dev = at::Device(at::kCUDA, 0);
  std::ofstream csv(out_dir + "/train_step.csv");
  csv << "mode,tokens_per_s,ms_per_step,peak_mib\n";
  const int64_t B = 8, T = 1024;
  struct Mode {
    const char* name;
    bool quantized;
    bool fast;
  };
  for (const Mode mode :
       {Mode{"int8_forward", true, true}, Mode{"fake_quant_bf16", true, false}, Mode{"plain_bf16", false, false}}) {
    models::LMConfig c;
    c.vocab_size = 50304;
    c.dim = 768;
    c.n_layers = 12;
    c.n_heads = 12;
    c.n_kv_heads = 4;
    c.ffn = "relu2_glu";
    c.ffn_dim = 2048;
    c.max_seq_len = T;
    bitlinear::QuantSpec spec;
    if (!mode.quantized) {
      spec.weight.type = bitlinear::WeightQuant::kNone;
      spec.act.type = bitlinear::ActQuant::kNone;
    }
    torch::manual_seed(0);
    models::BitLM lm(c, spec, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
    lm->to(dev);
    if (mode.fast) bitlinear::ops::install_training_kernels(*lm);
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& p : lm->named_parameters()) named.emplace_back(p.key(), p.value());
    training::AdamW opt(named, {});
    const auto tokens = at::randint(0, 50304, {B, T}, at::TensorOptions().device(dev).dtype(at::kLong));
    auto step = [&](int) {
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      auto loss = lm->loss(tokens, tokens);
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
      loss.backward();
      opt.step(1e-4, 0.0);
      opt.zero_grad();
    };
    step(0);
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    const double us = time_us(step, 2, 10);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
    const double peak =
        static_cast<double>(
            stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak) /
        (1 << 20);
    std::printf("%-16s %10.0f tok/s %8.1f ms/step  peak %8.0f MiB\n", mode.name, B * T / (us / 1e6), us / 1e3, peak);
    csv << fmt::format("{},{:.0f},{:.2f},{:.0f}\n", mode.name, B * T / (us / 1e6), us / 1e3, peak);
  }
  return 0;
}

int memory(const std::string& out_dir) {
  std::ofstream csv(out_dir + "/memory.csv");
  csv << "layer,in,out,bf16_bytes,packed_bytes,ratio\n";
  int64_t total_bf16 = 0, total_packed = 0;
  // The linear layers of one block of configs/lm_gpu.yaml (dim 768, 4 KV heads of 64, FFN 2048).
  for (const auto& [name, in, out] : std::vector<std::tuple<std::string, int64_t, int64_t>>{{"attn.q", 768, 768},
                                                                                            {"attn.k", 768, 256},
                                                                                            {"attn.v", 768, 256},
                                                                                            {"attn.o", 768, 768},
                                                                                            {"ffn.gate", 768, 2048},
                                                                                            {"ffn.up", 768, 2048},
                                                                                            {"ffn.down", 2048, 768}}) {
    bitlinear::BitLinearOptions o(in, out);
    bitlinear::BitLinear layer(o);
    bitlinear::ops::PackedBitLinear packed(*layer);
    const int64_t bf16 = in * out * 2, pb = packed->weight_bytes();
    total_bf16 += bf16;
    total_packed += pb;
    std::printf("%-10s %5lld x %5lld: bf16 %9lld B, packed %8lld B, %.2fx smaller\n", name.c_str(),
                static_cast<long long>(out), static_cast<long long>(in), static_cast<long long>(bf16),
                static_cast<long long>(pb), static_cast<double>(bf16) / pb);
    csv << fmt::format("{},{},{},{},{},{:.3f}\n", name, in, out, bf16, pb, static_cast<double>(bf16) / pb);
  }
  std::printf("one block: bf16 %lld B, packed %lld B: %.2fx smaller\n", static_cast<long long>(total_bf16),
              static_cast<long long>(total_packed), static_cast<double>(total_bf16) / total_packed);
  csv << fmt::format("block,,,{},{},{:.3f}\n", total_bf16, total_packed,
                     static_cast<double>(total_bf16) / total_packed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: w158a8_bench kernels|train|memory OUT_DIR\n");
    return 2;
  }
  const std::string what = argv[1], out = argv[2];
  std::filesystem::create_directories(out);
  if (what == "memory") return memory(out);
  if (what != "kernels" && what != "train") {
    std::fprintf(stderr, "w158a8_bench: unknown benchmark '%s' (kernels, train or memory)\n", what.c_str());
    return 2;
  }
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "w158a8_bench %s: no CUDA device; this benchmark needs a GPU (memory runs anywhere)\n",
                 what.c_str());
    return 3;
  }
  return what == "kernels" ? kernels(out) : train(out);
}
