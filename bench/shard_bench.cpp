// Per-rank memory and bytes on the wire of data-parallel training (dist.shard none, optimizer,
// gradients, parameters), measured on a short `train()` run against `bitqat plan`'s memory plan and
// the collective formulas of docs/distributed.md. bench/shard_memory.sh runs the grid and prints the
// tables; by hand:
//   BITQAT_BIN=build/bench/shard_bench launch/local.sh N run CONFIG --tag T --out DIR [--set k=v ...]
//   build/bench/shard_bench report DIR
//
// `run` trains CONFIG (train.steps >= 3) on the launched ranks, every rank measuring itself, phase by
// phase, VmHWM (/proc/self/status; writing 5 to /proc/self/clear_refs resets it where a phase begins)
// and the peak of live LibTorch CPU bytes (bench/counting_allocator.hpp in front of LibTorch's
// allocator):
//   setup       from the start until the run is set up (the whole model built, then sharded);
//   first_step  step 1;
//   step        steps 2 .. train.steps - 1 (the last step is left out: the final evaluation and
//               checkpoint come before the hook that would read it); of its live bytes also the peak
//               of step 2's forward, what is live after it, and the peak of its backward and update;
//   wire       the bytes of the collectives the trainer counted in its steps (DistContext), against
//              the formulas below computed from the trainer's shard layout.
// Each rank writes DIR/T.rankR.json. `report` pairs every run with the baseline run whose tag is
// "tiny-" + the rest of its tag (the same mode and world size with a tiny model: libraries, threads,
// Gloo, data and heap, everything but the model) and prints markdown tables.
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bench/counting_allocator.hpp"
#include "bitlinear/bit_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "core/enum_name.hpp"
#include "core/error.hpp"
#include "models/factory.hpp"
#include "schedules/schedule.hpp"
#include "training/config.hpp"
#include "training/distributed.hpp"
#include "training/memory_plan.hpp"
#include "training/shard_layout.hpp"
#include "training/ternary_gather.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace bitqat;

namespace {

// "VmHWM" or "VmRSS" of this process, in bytes.
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;  // "... kB"
  }
  throw std::runtime_error("no " + field + " in /proc/self/status");
}

void reset_hwm() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  if (!out) throw std::runtime_error("cannot reset the peak resident set (/proc/self/clear_refs)");
}

struct Wire {
  int64_t all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0;
};

// The bytes of the collectives of the run's steps, step by step (lambda_w from its schedule), as
// training/data_parallel.cpp, grad_sync.cpp and trainer.cpp issue them (the buffer convention of
// DistContext::collectives), N trainable elements, W ranks, S = a rank's shard (padding included):
//   every mode  the step's loss, finiteness flag and gradient norm: an all-reduce of 3 doubles; the
//               buffers (one broadcast per dtype, none in a BitLM)
//   none        all-reduce 4N (the gradient buckets)
//   optimizer   all-reduce 4N + 8 (the squared norm of the gradient shards); all-gather 4WS (updated
//               parameters)
//   gradients   reduce-scatter 4WS; all-gather 4WS; all-reduce 8
//   parameters  reduce-scatter 4WS; all-reduce 8 + 8 R (the |W| sums of the R runs of the weights that
//               travel as codes: their rows for a per-tensor scale, else their scale groups); all-gather: the rest (outside the blocks) 4W chunk,
//               once; every block twice (its forward and its recomputed backward): 4W chunk per tensor,
//               or W chunk / 4 for a ternary BitLinear weight at lambda_w 1 (2-bit codes)
// The norm's all-reduce happens when optim.grad_clip > 0 or the step is logged.
Wire expected_wire(const training::Config& cfg, int world) {
  if (cfg.distill.enabled) throw core::UserError("shard_bench: distillation runs are not modelled here");
  auto model = cfg.model;
  if (model.kind == models::ModelKind::kLM) model.lm.resolve_vocab(cfg.data.vocab(), model.where("vocab_size"));
  const auto h = models::make_meta_model(model, cfg.quant.spec, cfg.quant.include, cfg.quant.exclude, cfg.data.vocab());
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (const auto& item : h.module->named_parameters(true)) {
    if (item.value().requires_grad()) trainable.emplace_back(item.key(), item.value());
  }
  std::map<std::string, const bitlinear::BitLinearImpl*> layers;
  for (const auto& item : h.module->named_modules()) {
    if (const auto* l = dynamic_cast<const bitlinear::BitLinearImpl*>(item.value().get())) {
      layers[item.key().empty() ? "weight" : item.key() + ".weight"] = l;
    }
  }
  std::map<at::ScalarType, int64_t> buffers;
  for (const auto& b : h.module->buffers(true)) {
    if (b.numel() > 0) buffers[b.scalar_type()] += b.numel() * static_cast<int64_t>(b.element_size());
  }
  const auto mode = cfg.dist.shard;
  const bool zero3 = mode == training::ShardMode::kParameters;
  const auto units = training::block_buckets(trainable);
  const auto layout =
      zero3 ? training::make_shard_layout(trainable, world, units.groups)
            : training::make_shard_layout(trainable, world, static_cast<int64_t>(cfg.dist.bucket_mb * 1024 * 1024));
  const int64_t N = layout.numel, WS = static_cast<int64_t>(world) * layout.shard_numel;
  const auto lambda_w = schedules::make_schedule(cfg.quant.lambda_w, schedules::ScheduleRole::kLambda, cfg.train.steps);

  Wire w;
  for (int64_t step = 0; step < cfg.train.steps; ++step) {
    const int64_t done = step + 1;
    const bool norm = mode != training::ShardMode::kNone &&
                      (cfg.optim.grad_clip > 0.0 || done % cfg.train.log_every == 0 || done == cfg.train.steps);
    w.all_reduce += 8 * 3 + (norm ? 8 : 0);
    for (const auto& [dtype, bytes] : buffers) w.broadcast += bytes;
    switch (mode) {
      case training::ShardMode::kNone:
        w.all_reduce += 4 * N;
        break;
      case training::ShardMode::kOptimizer:
        w.all_reduce += 4 * N;
        w.all_gather += 4 * WS;
        break;
      case training::ShardMode::kGradients:
        w.reduce_scatter += 4 * WS;
        w.all_gather += 4 * WS;
        break;
      case training::ShardMode::kParameters: {
        w.reduce_scatter += 4 * WS;
        const bool at_one = lambda_w->at(step) == 1.0;
        for (size_t b = 0; b < layout.buckets.size(); ++b) {
          const bool rest = static_cast<int64_t>(b) == units.rest;
          for (const size_t k : layout.buckets[b].params) {
            const auto& lp = layout.params[k];
            const auto it = layers.find(lp.name);
            std::optional<training::FlatGroups> codes;
            if (at_one && it != layers.end() && lp.shape.size() == 2 &&
                it->second->options.quant.weight.type == bitlinear::WeightQuant::kTernary) {
              const auto sg = bitlinear::scale_grouping(it->second->options.quant.weight, lp.shape);
              const auto g = training::flat_groups(lp.numel, lp.shape[1], sg.group, sg.per_tensor);
              if (g.ok) codes = g;  // (a layer whose scale is below eps would travel in float32)
            }
            if (codes) w.all_reduce += 8 * codes->runs;
            const int64_t bytes = codes ? world * lp.chunk / 4 : 4 * world * lp.chunk;
            w.all_gather += rest ? bytes : 2 * bytes;
          }
        }
        break;
      }
    }
  }
  return w;
}

json wire_json(const Wire& w) {
  return {{"all_reduce", w.all_reduce},
          {"reduce_scatter", w.reduce_scatter},
          {"all_gather", w.all_gather},
          {"broadcast", w.broadcast}};
}

int run(const std::string& config, const std::vector<std::string>& sets, const std::string& tag,
        const std::string& out_dir) {
  static bench::CountingAllocator counter(c10::GetCPUAllocator());
  bench::CountingAllocator::instance = &counter;
  c10::SetCPUAllocator(&counter, /*priority=*/100);
  const int64_t rss_start = proc_status_bytes("VmRSS");

  const auto cfg = training::Config::load_file(config, sets);
  if (cfg.train.steps < 3) throw core::UserError("shard_bench: train.steps must be at least 3");
  const auto env = training::dist_env_from_environment();
  const auto plan = training::memory_plan(cfg, env.world_size);
  const auto formula = expected_wire(cfg, env.world_size);

  json rec = {{"tag", tag},
              {"mode", core::name_of(training::kShardModeNames, cfg.dist.shard)},
              {"world", env.world_size},
              {"rank", env.rank},
              {"launched", env.launcher != "none"},
              {"steps", cfg.train.steps},
              {"N", plan.trainable},
              {"S", plan.shard_numel},
              {"rss_start", rss_start}};
  json terms = json::object();
  for (const auto& t : plan.terms) terms[t.name] = t.bytes;
  rec["plan"] = {{"total", plan.total()}, {"setup_peak", plan.setup_peak.bytes}, {"terms", terms}};

  // Peaks per phase: VmHWM and the live LibTorch bytes, each reset where the phase begins.
  auto peaks = [&](const char* name) {
    rec[std::string(name) + "_hwm"] = proc_status_bytes("VmHWM");
    rec[std::string(name) + "_tensor_peak"] = counter.peak();
    reset_hwm();
    counter.reset_peak();
  };
  int64_t step_tensor_peak = 0;
  training::TrainOptions options;
  options.after_setup = [&] { peaks("setup"); };
  options.loss_hook = [&](int64_t step, int micro, at::Tensor& /*loss*/) {
    if (step != 1 || micro != 0) return;
    // Step 2's forward (with its gathers); the backward and update follow.
    rec["forward_tensor_peak"] = counter.peak();
    rec["live_after_forward"] = counter.live();
    step_tensor_peak = counter.peak();
    counter.track_peak_sizes(true);
    counter.reset_peak();
  };
  options.after_step = [&](int64_t done) {
    if (done == 1) {
      peaks("first_step");
      rec["steady_rss"] = proc_status_bytes("VmRSS");
      rec["steady_tensors"] = counter.live();
    } else if (done < cfg.train.steps) {
      step_tensor_peak = std::max(step_tensor_peak, counter.peak());
      if (done == 2) {
        rec["backward_tensor_peak"] = counter.peak();
        json blocks = json::array();  // [bytes, count], the largest first
        for (const auto& [bytes, count] : counter.peak_sizes()) blocks.push_back({bytes, count});
        rec["backward_peak_blocks"] = blocks;
        counter.track_peak_sizes(false);
      }
      counter.reset_peak();
      if (done == cfg.train.steps - 1) {
        rec["step_hwm"] = proc_status_bytes("VmHWM");
        rec["step_tensor_peak"] = step_tensor_peak;
      }
    }
  };
  const auto result = training::train(cfg, options);
  if (result.final_step - result.start_step != cfg.train.steps) {
    throw core::UserError("shard_bench: the run did not train every step from 0 (a run directory left over?)");
  }
  const auto& c = result.step_collectives;
  rec["counted"] = wire_json({c.all_reduce.bytes, c.reduce_scatter.bytes, c.all_gather.bytes, c.broadcast.bytes});
  rec["formula"] = wire_json(formula);
  fs::create_directories(out_dir);
  std::ofstream(fs::path(out_dir) / fmt::format("{}.rank{}.json", tag, env.rank)) << rec.dump() << "\n";
  return 0;
}

// ---- report ---------------------------------------------------------------------------------------

std::string mib(int64_t b) { return fmt::format("{:.1f}", static_cast<double>(b) / (1 << 20)); }
std::string pct(double x) { return fmt::format("{:+.1f}%", 100.0 * x); }

struct Run {
  std::vector<json> ranks;
  int64_t max_of(const char* key) const {
    int64_t m = 0;
    for (const auto& r : ranks) m = std::max(m, r.at(key).get<int64_t>());
    return m;
  }
  const json& first() const { return ranks.front(); }
};

int report(const std::string& dir) {
  std::map<std::string, Run> runs;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream in(e.path());
    const auto j = json::parse(in);
    runs[j.at("tag").get<std::string>()].ranks.push_back(j);
  }
  const std::vector<std::string> order = {"none", "optimizer", "gradients", "parameters"};
  std::vector<std::string> tags;
  for (const auto& [tag, r] : runs) {
    if (tag.rfind("tiny-", 0) != 0) tags.push_back(tag);
  }
  std::sort(tags.begin(), tags.end(), [&](const std::string& a, const std::string& b) {
    const auto& x = runs[a].first();
    const auto& y = runs[b].first();
    const auto mx = std::find(order.begin(), order.end(), x.at("mode").get<std::string>()) - order.begin();
    const auto my = std::find(order.begin(), order.end(), y.at("mode").get<std::string>()) - order.begin();
    return std::tuple(a.find("lambda") != std::string::npos, mx, x.at("world").get<int>(), a) <
           std::tuple(b.find("lambda") != std::string::npos, my, y.at("world").get<int>(), b);
  });

  fmt::print(
      "Per-rank memory (MiB; the largest rank; steps: steps 2 .. n-1; baseline: the tiny model's peak RSS "
      "in the same phase less its peak of live tensors)\n\n");
  fmt::print(
      "| run | mode | W | plan total | peak RSS | baseline | RSS - baseline | plan error | live tensors peak "
      "| plan error vs tensors | set-up plan | set-up RSS - baseline | set-up live tensors peak |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& tag : tags) {
    const auto& r = runs[tag];
    const auto& f = r.first();
    const int64_t plan = f.at("plan").at("total").get<int64_t>();
    const int64_t setup_plan = f.at("plan").at("setup_peak").get<int64_t>();
    const int64_t hwm = r.max_of("step_hwm");
    const int64_t tensors = r.max_of("step_tensor_peak");
    std::string base = "-", model = "-", err = "-", setup = "-";
    if (const auto it = runs.find("tiny-" + tag); it != runs.end()) {
      // The tiny run's RSS that is not its tensors: libraries, threads, Gloo, data, heap.
      auto baseline = [&](const char* phase) {
        int64_t b = 0;
        for (const auto& t : it->second.ranks) {
          b = std::max(b, t.at(std::string(phase) + "_hwm").get<int64_t>() -
                              t.at(std::string(phase) + "_tensor_peak").get<int64_t>());
        }
        return b;
      };
      const int64_t b = baseline("step");
      base = mib(b);
      model = mib(hwm - b);
      err = pct(static_cast<double>(plan - (hwm - b)) / static_cast<double>(hwm - b));
      setup = mib(r.max_of("setup_hwm") - baseline("setup"));
    }
    fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", tag,
               f.at("mode").get<std::string>(), f.at("world").get<int>(), mib(plan), mib(hwm), base, model, err,
               mib(tensors), pct(static_cast<double>(plan - tensors) / static_cast<double>(tensors)), mib(setup_plan),
               setup, mib(r.max_of("setup_tensor_peak")));
  }

  fmt::print(
      "\nLive tensors by phase (MiB, the largest rank): between steps, the peak of step 2's forward, what "
      "is live after it, the peak of its backward and update; the peak of step 1\n\n");
  fmt::print(
      "| run | between steps | forward peak | after forward | backward and update peak | step 1 peak | "
      "rank 0's tensors of 1 MiB and more at its backward peak: MiB x count |\n");
  fmt::print("|---|---|---|---|---|---|---|\n");
  for (const auto& tag : tags) {
    const auto& r = runs[tag];
    std::string blocks;
    for (const auto& j : r.ranks) {
      if (j.at("rank").get<int>() != 0 || !j.contains("backward_peak_blocks")) continue;
      auto list = j.at("backward_peak_blocks").get<std::vector<std::pair<int64_t, int64_t>>>();
      std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      for (const auto& [bytes, count] : list) {
        if (bytes >= (1 << 20)) blocks += fmt::format("{}{} x {}", blocks.empty() ? "" : ", ", mib(bytes), count);
      }
    }
    fmt::print("| {} | {} | {} | {} | {} | {} | {} |\n", tag, mib(r.max_of("steady_tensors")),
               mib(r.max_of("forward_tensor_peak")), mib(r.max_of("live_after_forward")),
               mib(r.max_of("backward_tensor_peak")), mib(r.max_of("first_step_tensor_peak")), blocks);
  }

  fmt::print("\nPlan terms (MiB, rank 0's plan)\n\n| run | ");
  const auto& terms0 = runs[tags.front()].first().at("plan").at("terms");
  std::string sep = "|---|";
  for (const auto& [name, v] : terms0.items()) {
    fmt::print("{} | ", name);
    sep += "---|";
  }
  fmt::print("\n{}\n", sep);
  for (const auto& tag : tags) {
    fmt::print("| {} |", tag);
    for (const auto& [name, v] : runs[tag].first().at("plan").at("terms").items()) fmt::print(" {} |", mib(v));
    fmt::print("\n");
  }

  fmt::print("\nCollectives per step (bytes of the buffers each call names; rank 0)\n\n");
  fmt::print(
      "| run | mode | W | N | S | all-reduce | reduce-scatter | all-gather | broadcast | formula: all-reduce | "
      "reduce-scatter | all-gather | broadcast | match |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& tag : tags) {
    const json* r0 = nullptr;
    for (const auto& j : runs[tag].ranks) {
      if (j.at("rank").get<int>() == 0) r0 = &j;
    }
    if (!r0) continue;
    const int64_t n = r0->at("steps").get<int64_t>();
    const auto& c = r0->at("counted");
    const auto& f = r0->at("formula");
    auto per = [n](const json& v) {
      const auto b = v.get<int64_t>();
      return b % n == 0 ? fmt::format("{}", b / n) : fmt::format("{:.2f}", static_cast<double>(b) / n);
    };
    fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", tag,
               r0->at("mode").get<std::string>(), r0->at("world").get<int>(), r0->at("N").get<int64_t>(),
               r0->at("S").get<int64_t>(), per(c.at("all_reduce")), per(c.at("reduce_scatter")),
               per(c.at("all_gather")), per(c.at("broadcast")), per(f.at("all_reduce")), per(f.at("reduce_scatter")),
               per(f.at("all_gather")), per(f.at("broadcast")), c == f ? "exact" : "DIFFERS");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Per-rank memory and collective bytes of the dist.shard modes against the plan");
  auto* run_cmd = app.add_subcommand("run", "train CONFIG on the launched ranks, measuring every rank");
  std::string config, tag, out;
  std::vector<std::string> sets;
  run_cmd->add_option("config", config, "the config")->required();
  run_cmd->add_option("--tag", tag, "the run's name in the report")->required();
  run_cmd->add_option("--out", out, "where every rank writes TAG.rankR.json")->required();
  run_cmd->add_option("--set", sets, "key.path=value overrides, as bitqat train takes them");
  auto* report_cmd = app.add_subcommand("report", "print the tables of the runs in DIR");
  std::string dir;
  report_cmd->add_option("dir", dir, "the runs' --out")->required();
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  try {
    return run_cmd->parsed() ? run(config, sets, tag, out) : report(dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "shard_bench: error: {}\n", e.what());
    std::fflush(stderr);
    std::_Exit(2);  // a failed process group may still have threads (training/distributed.hpp)
  }
}
