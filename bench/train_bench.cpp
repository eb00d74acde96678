// Training throughput of bitqat's own trainer: runs `train()` on a config (the quickstart by
// default) and times every optimizer step through the trainer's after_step hook, then prints the
// median tokens/s over the timed steps (after warm-up) as one JSON line. bench/quickstart_compare.sh
// runs it beside the same model written in PyTorch (bench/quickstart_pytorch.py).
//
//   build/bench/train_bench [--config configs/quickstart.yaml] [--warmup 20] [--steps 60]
//                           [--threads 2] [--set key.path=value ...]
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <ATen/record_function.h>

#include <map>
#include <mutex>

#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/cuda.h>

#include "core/cpu_isa.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "training/trainer.hpp"

namespace {

// --ops: per ATen op name, calls, inclusive wall time (nested ops count in their callers too) and
// self time (less the time of the ops it called), to see where a step goes. Time outside any
// recorded op (the fused bitqat kernels of a custom autograd forward, the trainer's own code) is the
// step time less the top-level ops' total.
struct OpStats {
  std::mutex mu;
  struct Entry {
    int64_t calls = 0;
    double inclusive = 0.0, self = 0.0;
  };
  std::map<std::string, Entry> by_name;
  double top_level = 0.0;
  bool on = false;
};
OpStats g_ops;

struct OpTimer : at::ObserverContext {
  std::chrono::steady_clock::time_point t0;
};
// Per thread: the time spent in the children of each open op.
thread_local std::vector<double> t_child_time;

void install_op_timer() {
  at::addGlobalCallback(at::RecordFunctionCallback(
                            [](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
                              auto c = std::make_unique<OpTimer>();
                              t_child_time.push_back(0.0);
                              c->t0 = std::chrono::steady_clock::now();
                              return c;
                            },
                            [](const at::RecordFunction& fn, at::ObserverContext* ctx) {
                              const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                                              static_cast<OpTimer*>(ctx)->t0)
                                                    .count();
                              const double children = t_child_time.empty() ? 0.0 : t_child_time.back();
                              if (!t_child_time.empty()) t_child_time.pop_back();
                              if (!t_child_time.empty()) t_child_time.back() += dt;
                              if (!g_ops.on) return;
                              std::lock_guard<std::mutex> lock(g_ops.mu);
                              auto& e = g_ops.by_name[fn.name()];
                              e.calls += 1;
                              e.inclusive += dt;
                              e.self += dt - children;
                              if (t_child_time.empty()) g_ops.top_level += dt;
                            })
                            .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
}

}  // namespace

int main(int argc, char** argv) {
  bitqat::core::default_onednn_max_cpu_isa();  // as the bitqat command does (core/cpu_isa.hpp)
  std::string config = "configs/quickstart.yaml";
  int warmup = 20, steps = 60, threads = 2;
  std::vector<std::string> sets;
  CLI::App app{"bitqat training throughput"};
  app.add_option("--config", config, "training config");
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(1, 100000));
  app.add_option("--steps", steps, "timed steps")->check(CLI::Range(1, 100000));
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024));
  app.add_option("--set", sets, "config override")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  bool ops = false;
  app.add_flag("--ops", ops, "also print the ATen ops of the timed steps by self time");
  CLI11_PARSE(app, argc, argv);
  try {
    bitqat::core::init_logging(0);
    spdlog::set_level(spdlog::level::warn);
    const auto dir = std::filesystem::temp_directory_path() / ("bitqat_train_bench_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    sets.push_back("run.dir=" + dir.string());
    sets.push_back(fmt::format("device.threads={}", threads));
    sets.push_back("train.eval_every=0");
    sets.push_back("checkpoint.every=0");
    auto cfg = bitqat::training::Config::load_file(config, sets);
    const int64_t tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len;
    std::vector<double> seconds;
    auto last = std::chrono::steady_clock::now();
    bitqat::training::TrainOptions o;
    // The run keeps its config's schedules and length (so each step costs what it costs in the real
    // run) and is stopped once enough steps are timed.
    if (ops) install_op_timer();
    struct Stop {};
    // On a GPU the host runs ahead of the device (no sync inside a step): per-step host times
    // mean nothing there, so the timed window is bracketed by device syncs and reported as a mean,
    // and the caching allocator's peak is taken over the timed steps.
    const bool gpu = cfg.device.type != bitqat::training::DeviceType::kCpu && torch::cuda::is_available();
    std::chrono::steady_clock::time_point window_start;
    double window_s = 0.0;
    o.after_step = [&](int64_t) {
      if (gpu &&
          (static_cast<int>(seconds.size()) + 1 == warmup || static_cast<int>(seconds.size()) + 1 == warmup + steps)) {
        torch::cuda::synchronize();
        if (static_cast<int>(seconds.size()) + 1 == warmup) {
          c10::cuda::CUDACachingAllocator::resetPeakStats(0);
          window_start = std::chrono::steady_clock::now();
        } else {
          window_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
        }
      }
      const auto now = std::chrono::steady_clock::now();
      seconds.push_back(std::chrono::duration<double>(now - last).count());
      last = now;
      g_ops.on = ops && static_cast<int>(seconds.size()) >= warmup;
      if (static_cast<int>(seconds.size()) == warmup + steps) throw Stop{};
    };
    try {
      bitqat::training::train(cfg, o);
    } catch (const Stop&) {
    }
    std::filesystem::remove_all(dir);
    if (static_cast<int>(seconds.size()) < warmup + steps) {
      throw bitqat::core::UserError(
          fmt::format("{}: the run has {} steps, fewer than --warmup + --steps", config, seconds.size()));
    }
    std::vector<double> timed(seconds.begin() + warmup, seconds.end());
    std::sort(timed.begin(), timed.end());
    const double median = timed[timed.size() / 2];
    nlohmann::json j = {{"trainer", "bitqat"},
                        {"config", config},
                        {"threads", threads},
                        {"timed_steps", timed.size()},
                        {"tokens_per_step", tokens_per_step},
                        {"median_step_ms", 1e3 * median},
                        {"median_tokens_per_s", static_cast<double>(tokens_per_step) / median}};
    if (gpu) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
      j["device"] = "cuda";
      j["mean_step_ms"] = 1e3 * window_s / steps;
      j["tokens_per_s"] = static_cast<double>(tokens_per_step) * steps / window_s;
      j["peak_allocated_bytes"] = stats.allocated_bytes[0].peak;
    }
    std::printf("%s\n", j.dump().c_str());
    if (ops) {
      std::vector<std::pair<double, std::string>> rows;
      double total_self = 0.0;
      for (const auto& [name, e] : g_ops.by_name) {
        total_self += e.self;
        rows.emplace_back(e.self, fmt::format("{:>8.2f} ms/step self {:>8.2f} inclusive {:>7.1f} calls/step  {}",
                                              1e3 * e.self / steps, 1e3 * e.inclusive / steps,
                                              static_cast<double>(e.calls) / steps, name));
      }
      std::sort(rows.rbegin(), rows.rend());
      double step_total = 0.0;
      for (double t : timed) step_total += t;
      std::printf("step %.2f ms (mean), in recorded ops %.2f ms (self times sum to %.2f), outside them %.2f ms\n",
                  1e3 * step_total / steps, 1e3 * g_ops.top_level / steps, 1e3 * total_self / steps,
                  1e3 * (step_total - g_ops.top_level) / steps);
      for (size_t i = 0; i < rows.size() && i < 45; ++i) std::printf("%s\n", rows[i].second.c_str());
    }
    return 0;
  } catch (const bitqat::core::UserError& e) {
    std::fprintf(stderr, "train_bench: error: %s\n", e.what());
    return 2;
  }
}
