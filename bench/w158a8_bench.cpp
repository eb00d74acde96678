// Benchmarks of the W1.58A8 path (a program, not a test):
//   w158a8_bench kernels OUT_DIR   measures the device's ceilings (copy bandwidth, cuBLAS bf16 and
//                                  int8 matmul), then our layer call (activation quantization
//                                  included; the matmul alone beside it) against cuBLAS bf16
//                                  (at::matmul) of the same shape, CUDA events after warm-up,
//                                  weights rotated through > 200 MB so L2 never holds them; then
//                                  every kernel plan that can serve each shape (cuda/w158a8.hpp
//                                  Kernel x split-K parts), the same layer call;
//                                  kernels.csv, candidates.csv and kernels.json (fractions of the
//                                  measured floors; `candidates`, from which tools/dispatch_table.py
//                                  derives the dispatch table)
//   w158a8_bench train OUT_DIR     one QAT training step of a GPU-sized LM: int8 forward vs the
//                                  fake-quant bf16 path vs the plain bf16 model (tokens/s, peak memory)
//   w158a8_bench memory OUT_DIR    inference bytes of packed ternary linear layers vs bf16 (any machine);
//                                  on a GPU also the allocator's measured bytes of a packed vs a bf16
//                                  LM, loaded and over a forward (memory_gpu.csv)
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
#include "cuda/w158a8.hpp"
#include "models/lm.hpp"
#include "training/optimizer.hpp"

namespace {

using namespace bitqat;

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

// The device's ceilings, measured in this run (never assumed): a 1 GiB device-to-device copy (bytes
// read + written per second), a 8192^3 cuBLAS bf16 matmul and a 8192^3 int8 matmul (at::_int_mm,
// cuBLASLt IMMA), each the best of a few timed repeats after warm-up.
struct Ceilings {
  double bandwidth = 0, bf16_flops = 0, int8_ops = 0;  // bytes/s, FLOP/s, OP/s
};

Ceilings measure_ceilings() {
  const auto on = at::TensorOptions().device(at::kCUDA, 0);
  Ceilings c;
  {
    const int64_t n = int64_t{1} << 30;
    auto src = at::empty({n}, on.dtype(at::kByte)).fill_(1), dst = at::empty({n}, on.dtype(at::kByte));
    double best = 1e30;
    for (int r = 0; r < 3; ++r) best = std::min(best, time_us([&](int) { dst.copy_(src); }, 2, 10));
    c.bandwidth = 2.0 * static_cast<double>(n) / (best * 1e-6);
  }
  const int64_t s = 8192;
  const double ops = 2.0 * s * s * s;
  {
    const auto a = at::randn({s, s}, on.dtype(at::kBFloat16)), b = at::randn({s, s}, on.dtype(at::kBFloat16));
    double best = 1e30;
    for (int r = 0; r < 3; ++r) best = std::min(best, time_us([&](int) { at::matmul(a, b); }, 2, 10));
    c.bf16_flops = ops / (best * 1e-6);
  }
  {
    const auto a = at::randint(-128, 128, {s, s}, on.dtype(at::kChar));
    const auto b = at::randint(-128, 128, {s, s}, on.dtype(at::kChar));
    double best = 1e30;
    for (int r = 0; r < 3; ++r) best = std::min(best, time_us([&](int) { at::_int_mm(a, b); }, 2, 10));
    c.int8_ops = ops / (best * 1e-6);
  }
  std::printf("ceilings (measured): copy %.0f GB/s, bf16 matmul %.0f TFLOP/s, int8 matmul %.0f TOP/s\n",
              c.bandwidth / 1e9, c.bf16_flops / 1e12, c.int8_ops / 1e12);
  return c;
}

// The plans tried at M tokens: every kernel that can serve M, split-K in parts that can fill the
// GPU (the GEMVs up to 8, the tensor-core kernels up to 4).
std::vector<cuda::Plan> candidate_plans(int64_t m, int64_t k) {
  std::vector<cuda::Plan> out;
  for (int kk = 0; kk < cuda::kKernelCount; ++kk) {
    const auto kernel = static_cast<cuda::Kernel>(kk);
    const bool gemv = kernel == cuda::Kernel::kGemvTiled || kernel == cuda::Kernel::kGemvFused;
    for (const int splits : {1, 2, 4, 8}) {
      if (!gemv && splits == 8) continue;
      const cuda::Plan plan{kernel, splits};
      if (!*cuda::plan_refusal(plan, m, k, cuda::ScaleKind::kPerTensor)) out.push_back(plan);
    }
  }
  return out;
}

// Every candidate plan of one shape: the whole layer call (bf16 activations quantized, or fused at
// M = 1, to bf16 output) through the ops with the plan forced, weights rotated as above.
void candidates(const at::Tensor& x, std::vector<bitlinear::ops::PackedTernary>& wp, int64_t m, int64_t n, int64_t k,
                double bytes, const Ceilings& ceil, std::ofstream& csv, std::string& json) {
  const at::Tensor none;
  const double floor = std::max(bytes / ceil.bandwidth, 2.0 * m * n * k / ceil.int8_ops) * 1e6;
  for (const auto& plan : candidate_plans(m, k)) {
    bitlinear::ops::set_plan_override(&plan);
    const double us = time_us(
        [&](int i) { bitlinear::ops::w158a8_linear(x, none, 1e-6, 1e-5, wp[i % wp.size()], none, at::kBFloat16); }, 10,
        50);
    bitlinear::ops::set_plan_override(nullptr);
    std::printf("    %-14s x %d: %9.2f us (%3.0f%% of the floor)\n", cuda::kernel_name(plan.kernel), plan.splits, us,
                100.0 * floor / us);
    csv << fmt::format("{},{},{},{},{},{:.3f},{:.4f}\n", m, n, k, cuda::kernel_name(plan.kernel), plan.splits, us,
                       floor / us);
    json += fmt::format(
        "{}\n    {{\"M\": {}, \"N\": {}, \"K\": {}, \"kernel\": \"{}\", \"splits\": {}, \"us\": {:.3f}, "
        "\"floor_fraction\": {:.4f}}}",
        json.empty() ? "" : ",", m, n, k, cuda::kernel_name(plan.kernel), plan.splits, us, floor / us);
  }
  for (auto& w : wp) w.expanded = at::Tensor();  // the int8 expansions of cuBLAS's plan: freed per shape
}

// Every time includes the activation quantization (bf16 input to bf16 output), as a BitLinear layer
// runs; the matmul alone is reported beside it. Weights rotate through > 200 MB so L2 never holds them.
int kernels(const std::string& out_dir) {
  const auto dev = at::Device(at::kCUDA, 0);
  const Ceilings ceil = measure_ceilings();
  std::ofstream csv(out_dir + "/kernels.csv");
  csv << "M,N,K,us,us_matmul_only,us_cublas_bf16,speedup_vs_bf16,gbps,tops,floor_us,floor_fraction,"
         "floor_us_bf16,cublas_floor_fraction\n";
  std::string json = fmt::format(
      "{{\n  \"ceilings\": {{\"copy_bytes_per_s\": {:.6g}, \"bf16_flop_per_s\": {:.6g}, \"int8_op_per_s\": {:.6g}}},\n"
      "  \"kernels\": [",
      ceil.bandwidth, ceil.bf16_flops, ceil.int8_ops);
  std::printf("%6s %6s %6s | %9s %9s %9s | %8s %8s | %7s | %6s %6s\n", "M", "N", "K", "us", "mm us", "bf16 us", "GB/s",
              "TOP/s", "speedup", "floor", "bf16fl");
  std::ofstream cand_csv(out_dir + "/candidates.csv");
  cand_csv << "M,N,K,kernel,splits,us,floor_fraction\n";
  std::string cand_json;
  bool first = true;
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
    for (int64_t m : {1, 4, 16, 17, 64, 128, 512, 4096}) {
      const auto x = at::randn({m, k}, at::TensorOptions().device(dev).dtype(at::kBFloat16));
      const auto xq = bitlinear::ops::quantize_activations_int8(x);
      const at::Tensor none;
      const double mm_only =
          time_us([&](int i) { bitlinear::ops::w158a8_matmul(xq, wp[i % wp.size()], none, at::kBFloat16); }, 10, 50);
      const double ours = time_us(
          [&](int i) { bitlinear::ops::w158a8_linear(x, none, 1e-6, 1e-5, wp[i % wp.size()], none, at::kBFloat16); },
          10, 50);
      const double bf16 = time_us([&](int i) { at::matmul(x, wb[i % wb.size()].t()); }, 10, 50);
      const double kp = static_cast<double>((k + 127) / 128 * 128);
      // Bytes of the whole layer call: x in bf16, packed weights, codes written and read, y in bf16.
      const double bytes = n * kp / 4 + m * k * 2.0 + 2.0 * m * kp + m * n * 2.0;
      const double ops = 2.0 * m * n * k;
      const double floor = std::max(bytes / ceil.bandwidth, ops / ceil.int8_ops) * 1e6;
      const double floor_bf16 =
          std::max((n * k * 2.0 + m * k * 2.0 + m * n * 2.0) / ceil.bandwidth, ops / ceil.bf16_flops) * 1e6;
      std::printf("%6lld %6lld %6lld | %9.2f %9.2f %9.2f | %8.0f %8.1f | %6.2fx | %5.0f%% %5.0f%%\n",
                  static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ours, mm_only, bf16,
                  bytes / ours / 1e3, ops / ours / 1e6, bf16 / ours, 100.0 * floor / ours, 100.0 * floor_bf16 / bf16);
      csv << fmt::format("{},{},{},{:.3f},{:.3f},{:.3f},{:.3f},{:.1f},{:.2f},{:.3f},{:.4f},{:.3f},{:.4f}\n", m, n, k,
                         ours, mm_only, bf16, bf16 / ours, bytes / ours / 1e3, ops / ours / 1e6, floor, floor / ours,
                         floor_bf16, floor_bf16 / bf16);
      json += fmt::format(
          "{}\n    {{\"M\": {}, \"N\": {}, \"K\": {}, \"us\": {:.3f}, \"us_matmul_only\": {:.3f}, "
          "\"us_cublas_bf16\": {:.3f}, \"speedup_vs_bf16\": {:.4f}, \"floor_us\": {:.4f}, \"floor_fraction\": {:.4f}, "
          "\"floor_us_bf16\": {:.4f}, \"cublas_floor_fraction\": {:.4f}}}",
          first ? "" : ",", m, n, k, ours, mm_only, bf16, bf16 / ours, floor, floor / ours, floor_bf16,
          floor_bf16 / bf16);
      first = false;
      candidates(x, wp, m, n, k, bytes, ceil, cand_csv, cand_json);
    }
  }
  json += "\n  ],\n  \"candidates\": [" + cand_json + "\n  ]\n}\n";
  std::ofstream(out_dir + "/kernels.json") << json;
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
    c.ffn = bitqat::models::Ffn::kRelu2Glu;
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

// Measured, not computed: the caching allocator's bytes after loading a model onto the GPU and its
// peak over a forward of 1 x 512 tokens, for the GPU-sized LM (configs/lm_gpu.yaml's model) in bf16
// against the same model packed for inference. The packed model is packed on the CPU and then moved:
// its float32 latent weights never reach the GPU. Embeddings, norms and the LM head stay float32 in
// the packed model (they are not ternary), bf16 in the other.
int memory_gpu(const std::string& out_dir) {
  const auto dev = at::Device(at::kCUDA, 0);
  std::ofstream csv(out_dir + "/memory_gpu.csv");
  csv << "model,loaded_bytes,forward_peak_bytes\n";
  models::LMConfig c;
  c.vocab_size = 50304;
  c.dim = 768;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 4;
  c.ffn = bitqat::models::Ffn::kRelu2Glu;
  c.ffn_dim = 2048;
  c.max_seq_len = 1024;
  const auto tokens = at::randint(0, c.vocab_size, {1, 512}, at::TensorOptions().dtype(at::kLong));
  auto allocated = [] {
    const auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
    return st.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
  };
  for (const bool packed : {false, true}) {
    torch::manual_seed(0);
    models::BitLM lm(c, bitlinear::QuantSpec{}, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
    lm->eval();
    if (packed) bitlinear::ops::pack_for_inference(*lm);
    at::cuda::getCurrentCUDAStream().synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    const int64_t base = allocated().current;
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    if (packed) {
      lm->to(dev);
    } else {
      lm->to(dev, at::kBFloat16);
    }
    const int64_t loaded = allocated().current - base;
    {
      at::NoGradGuard ng;
      lm->forward(tokens.to(dev));
    }
    at::cuda::getCurrentCUDAStream().synchronize();
    const int64_t peak = allocated().peak - base;
    const char* name = packed ? "packed_ternary" : "bf16";
    std::printf("GPU memory, %-14s: loaded %8.1f MiB, forward peak %8.1f MiB\n", name, loaded / 1048576.0,
                peak / 1048576.0);
    csv << fmt::format("{},{},{}\n", name, loaded, peak);
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
  if (torch::cuda::is_available()) return memory_gpu(out_dir);
  std::printf("no CUDA device: the measured GPU memory (memory_gpu.csv) needs one\n");
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
