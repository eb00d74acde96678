// Time of the gradient all-reduce that data-parallel training does once per step: sum all-reduces of
// float32 buffers of given sizes over the launched process group (Gloo on the CPU, NCCL on GPUs).
// Start it like training, e.g. on this machine:
//   BITQAT_BIN=build/bench/allreduce_bench launch/local.sh 2 run [MiB ...]
// Rank 0 prints size, median time, algorithm bandwidth (bytes / time) and bus bandwidth
// (2 (n-1)/n bytes / time, what a ring moves per rank), after 3 warm-up calls, over 11 calls.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "training/distributed.hpp"

int main(int argc, char** argv) {
  try {
    using namespace bitqat::training;
    std::vector<double> mib;
    for (int i = 2; i < argc; ++i) mib.push_back(std::atof(argv[i]));
    if (mib.empty()) mib = {1.0, 3.14, 25.0, 100.0};
    const auto env = dist_env_from_environment();
    at::set_num_threads(1);
    const bool cuda = std::getenv("BENCH_CUDA") != nullptr;
    const at::Device dev = cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank)) : at::kCPU;
    DistContext dist(env, "auto", std::chrono::seconds(120), dev);
    if (!dist.active()) throw bitqat::core::UserError("start it with a launcher (launch/local.sh N run)");
    const int n = dist.world();
    if (dist.is_main()) fmt::print("{} ranks, {}: size_MiB median_ms algbw_GB/s busbw_GB/s\n", n, dist.backend());
    for (const double m : mib) {
      auto t = at::ones({static_cast<int64_t>(m * (1 << 20) / 4)}, at::TensorOptions().device(dev));
      std::vector<double> ms;
      for (int i = 0; i < 14; ++i) {
        dist.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        auto op = dist.all_reduce_sum_async(t, "bench all-reduce");
        op.wait();
        if (cuda) t.cpu();  // the wait only orders the streams
        const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= 3) ms.push_back(dt);
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      const double bytes = static_cast<double>(t.numel()) * 4.0;
      if (dist.is_main()) {
        fmt::print("{:.2f} {:.3f} {:.3f} {:.3f}\n", m, med, bytes / med / 1e6, 2.0 * (n - 1) / n * bytes / med / 1e6);
      }
    }
    dist.barrier();
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "allreduce_bench: error: {}\n", e.what());
    return 2;
  }
}
