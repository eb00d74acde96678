// Storage and inference memory of a DiT run in bf16 against its 2-bit packed export (the sizes of
// the image-generation comparison in the README). One mode per process, so that the allocator's peak
// belongs to one model:
//   build/bench/dit_footprint bf16   RUN_DIR     [N] [STEPS]   the run's model cast to bfloat16
//   build/bench/dit_footprint packed EXPORT_DIR  [N] [STEPS]   a `bitqat export --format packed` dir
// It prints one JSON line:
//   file_bytes       bf16: a safetensors file of every model tensor in bf16, written and measured;
//                    packed: the export's model.safetensors (2-bit codes + float32 scales for the
//                    quantized linears, float32 for the rest)
//   weight_bytes     bytes of the module's parameters and buffers as loaded for inference
//   peak_bytes       peak of live CPU-allocator bytes (LibTorch tensors: weights + activations)
//                    while sampling N images (default 10, one per class) with STEPS Heun steps
//                    (default 10) at guidance 2, measured by a counting allocator installed in
//                    front of LibTorch's CPU allocator
//   vm_hwm_kib       the process's peak resident set (VmHWM), LibTorch's code and the data included
//   sample_s         wall time of that sampling (the packed CPU path runs the scalar reference
//                    kernels: slow by design)
#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "bench/counting_allocator.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/dit.hpp"
#include "models/flow.hpp"
#include "models/state_dict.hpp"
#include "training/run_loader.hpp"

namespace {

int64_t vm_hwm_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

int64_t module_bytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& t : m.parameters()) n += t.numel() * static_cast<int64_t>(t.element_size());
  for (const auto& t : m.buffers()) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  static bitqat::bench::CountingAllocator counter(c10::GetCPUAllocator());
  bitqat::bench::CountingAllocator::instance = &counter;
  c10::SetCPUAllocator(&counter, /*priority=*/100);
  try {
    if (argc < 3 || (std::string(argv[1]) != "bf16" && std::string(argv[1]) != "packed")) {
      throw bitqat::core::UserError("usage: dit_footprint bf16 RUN_DIR | packed EXPORT_DIR [N] [STEPS]");
    }
    const std::string mode = argv[1], dir = argv[2];
    const int64_t n = argc > 3 ? std::atoll(argv[3]) : 10;
    const int64_t steps = argc > 4 ? std::atoll(argv[4]) : 10;
    auto run = bitqat::training::load_run(dir, at::Device(at::kCPU));
    auto dit = std::dynamic_pointer_cast<bitqat::models::BitDiTImpl>(run.task->module_ptr());
    if (!dit) throw bitqat::core::UserError(dir + ": not a DiT run");
    int64_t file_bytes = 0;
    if (mode == "bf16") {
      dit->to(at::kBFloat16);
      const auto tmp = fs::temp_directory_path() / fmt::format("dit_footprint_{}.safetensors", ::getpid());
      bitqat::core::write_file_atomic(tmp.string(),
                                      bitqat::checkpoints::encode_safetensors(bitqat::models::model_tensors(*dit)));
      file_bytes = static_cast<int64_t>(fs::file_size(tmp));
      fs::remove(tmp);
    } else {
      if (!fs::exists(dir + "/manifest.json")) throw bitqat::core::UserError(dir + ": not a packed export");
      file_bytes = static_cast<int64_t>(fs::file_size(dir + "/model.safetensors"));
    }
    const auto labels = at::arange(n, at::kLong).remainder(dit->config.num_classes);
    counter.reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    const auto images = bitqat::models::sample_images(*dit, labels, steps, 2.0, bitqat::models::Solver::kHeun, 1);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(
        "{{\"mode\": \"{}\", \"dir\": \"{}\", \"file_bytes\": {}, \"weight_bytes\": {}, \"peak_bytes\": {}, "
        "\"vm_hwm_kib\": {}, \"samples\": {}, \"steps\": {}, \"sample_s\": {:.3f}, \"threads\": {}}}\n",
        mode, dir, file_bytes, module_bytes(*dit), counter.peak(), vm_hwm_kib(), images.size(0), steps, s,
        at::get_num_threads());
    return 0;
  } catch (const bitqat::core::UserError& e) {
    fmt::print(stderr, "dit_footprint: error: {}\n", e.what());
    return 2;
  }
}
