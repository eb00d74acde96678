#include "training/trainer.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/utils.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "data/source.hpp"
#include "schedules/schedule.hpp"
#include "training/distributed.hpp"
#include "training/grad_sync.hpp"
#include "training/init_from.hpp"
#include "training/metrics.hpp"
#include "training/optimizer.hpp"
#include "training/run_state.hpp"
#include "training/task.hpp"

namespace bitqat::training {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// bf16 autocast for the forward pass on CUDA (the backward follows the recorded dtypes).
class AutocastScope {
 public:
  explicit AutocastScope(bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
    prev_ = at::autocast::is_autocast_enabled(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~AutocastScope() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, prev_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  bool prev_ = false;
};

at::Device pick_device(const DeviceConfig& dc, int local_rank) {
  const bool has_cuda = torch::cuda::is_available();
  if (dc.type == "cuda" && !has_cuda) {
    throw core::UserError("device.type = cuda, but no CUDA device is visible; use device.type: auto or cpu");
  }
  if (dc.type == "cpu" || !has_cuda) return at::Device(at::kCPU);
  const int n = static_cast<int>(torch::cuda::device_count());
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
}

std::unique_ptr<schedules::Schedule> schedule_or_constant(const core::Node& node, schedules::ScheduleRole role,
                                                          int64_t steps, double constant) {
  if (node.defined()) return schedules::make_schedule(node, role, steps);
  auto doc = core::Node::load_string(fmt::format("kind: constant\nvalue: {}\n", constant), "<default>");
  return schedules::make_schedule(doc, role, steps);
}

data::Batch to_device(const data::Batch& b, const at::Device& d) {
  if (d.is_cpu()) return b;
  return data::Batch{b.inputs.to(d, /*non_blocking=*/true), b.targets.to(d, /*non_blocking=*/true)};
}

std::string hms(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return fmt::format("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

}  // namespace

TrainResult train(const Config& cfg, const TrainOptions& options) {
  const auto env = dist_env_from_environment();
  if (cfg.device.threads > 0) at::set_num_threads(cfg.device.threads);
  const at::Device device = pick_device(cfg.device, env.local_rank);
  DistContext dist(env, cfg.dist.backend, std::chrono::seconds(cfg.dist.timeout_s), device);
  const bool main_rank = dist.is_main();
  const int rank = dist.rank();
  const int world = dist.world();
  const bool autocast = device.is_cuda() && cfg.device.precision != "fp32";
  if (device.is_cpu() && cfg.device.precision == "bf16") {
    throw core::ConfigError(fmt::format("{} = bf16: bf16 autocast is for GPUs; use fp32 (or auto) on CPU",
                                        cfg.root.child("device").where("precision")));
  }

  const std::string run_dir = cfg.run.run_dir();
  const std::string ckpt_dir = run_dir + "/checkpoints";
  TrainResult result;
  result.run_dir = run_dir;

  // Refuse to clobber: a run directory with checkpoints is resumed or renamed, never overwritten.
  const auto latest = checkpoints::find_latest_checkpoint(ckpt_dir);
  if (options.resume && !latest) {
    throw core::UserError(
        fmt::format("--resume: no complete checkpoint in {} (nothing to resume; drop --resume "
                    "to start this run from scratch)",
                    ckpt_dir));
  }
  if (!options.resume && latest) {
    throw core::UserError(
        fmt::format("{} already holds checkpoints (newest: {}); pass --resume to continue it, or "
                    "choose another run.name (--set run.name=...)",
                    run_dir, *latest));
  }

  torch::manual_seed(cfg.run.seed);
  const auto data_cfg = data::DataConfig::from_yaml(cfg.data);
  const auto source = data::make_source(data_cfg, cfg.run.seed);
  auto task = make_task(cfg, *source, device);
  auto& model = task->module();

  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model.named_parameters(true)) {
    if (item.value().requires_grad()) named.emplace_back(item.key(), item.value());
  }
  AdamW optimizer(named, AdamWOptions{cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps});
  std::vector<at::Tensor> params;
  for (const auto& [n, p] : named) params.push_back(p);

  const int64_t steps = cfg.train.steps;
  const auto lr_sched = schedule_or_constant(cfg.optim.lr, schedules::ScheduleRole::kLearningRate, steps, 1e-3);
  const auto wd_sched = schedule_or_constant(cfg.optim.weight_decay, schedules::ScheduleRole::kWeightDecay, steps, 0.0);
  const auto lw_sched = schedule_or_constant(cfg.quant.lambda_w, schedules::ScheduleRole::kLambda, steps, 1.0);
  const auto la_sched = schedule_or_constant(cfg.quant.lambda_a, schedules::ScheduleRole::kLambda, steps, 1.0);

  const int64_t global_batch = cfg.train.batch_size * world * cfg.train.grad_accum;
  const std::string hash = cfg.compat_hash();
  int64_t start_step = 0;
  int64_t bad_streak = 0;
  if (latest) {
    const auto ck = checkpoints::read_checkpoint(*latest);
    const std::string saved_hash = ck.state.value("config_hash", std::string());
    if (saved_hash != hash) {
      throw core::UserError(
          fmt::format("{}: written with config hash {}, this config has {}: the model or "
                      "quantization settings differ, so its tensors do not fit; resume with "
                      "the run's own config ({}/config.resolved.yaml)",
                      *latest, saved_hash, hash, run_dir));
    }
    std::map<std::string, at::Tensor> model_map(ck.model.begin(), ck.model.end());
    load_model_tensors(model, model_map, *latest + "/model.safetensors");
    std::map<std::string, at::Tensor> opt_map(ck.optimizer.begin(), ck.optimizer.end());
    optimizer.load_state_tensors(opt_map, *latest + "/optimizer.safetensors");
    std::map<std::string, at::Tensor> extra(ck.extra.begin(), ck.extra.end());
    restore_rng_states(extra);
    start_step = ck.step;
    bad_streak = ck.state.value("bad_streak", int64_t{0});
    const int64_t saved_gb = ck.state.value("global_batch", global_batch);
    const int64_t saved_world = ck.state.value("world_size", int64_t{1});
    // Every rank holds the whole model and optimizer state, and a batch is a function of the global
    // row index, so another world size resumes exactly when the global batch is the same.
    if (saved_world != world && saved_gb == global_batch && main_rank) {
      spdlog::info(
          "resuming a {}-rank run on {} ranks with the same global batch {}: the data order continues "
          "unchanged",
          saved_world, world, global_batch);
    }
    if (saved_gb != global_batch && main_rank) {
      spdlog::warn(
          "resuming with global batch {} (checkpoint: {}): the data order continues by step, but the "
          "run no longer matches one uninterrupted run",
          global_batch, saved_gb);
    }
    if (main_rank) spdlog::info("resumed from {} at step {}", *latest, start_step);
    if (main_rank && !cfg.init_from.empty()) {
      spdlog::info("init_from = {} is not read: the resumed checkpoint holds the weights", cfg.init_from);
    }
  } else if (!cfg.init_from.empty()) {
    // Every rank reads the source; the broadcast below would make them agree anyway.
    init_model_from(cfg.init_from, model, cfg.root.where("init_from"));
  }

  GradSync sync(dist, model, static_cast<int64_t>(cfg.dist.bucket_mb * 1024 * 1024), cfg.dist.overlap);
  sync.broadcast_parameters();
  std::vector<at::Tensor> replicated = params;  // what must stay bit-identical across ranks
  for (const auto& b : model.buffers(true)) replicated.push_back(b);
  if (dist.active() && main_rank) {
    const auto bk = sync.buckets();
    int64_t bytes = 0;
    for (const auto& b : bk) bytes += b.bytes;
    spdlog::info("data parallel: {} gradient buckets, {:.2f} MiB all-reduced per step (dist.bucket_mb {}, overlap {})",
                 bk.size(), static_cast<double>(bytes) / (1 << 20), cfg.dist.bucket_mb, cfg.dist.overlap);
  }

  std::unique_ptr<MetricsWriter> metrics;
  if (main_rank) {
    fs::create_directories(run_dir);
    core::write_file_atomic(run_dir + "/config.resolved.yaml", core::to_yaml_string(cfg.resolved()));
    metrics = std::make_unique<MetricsWriter>(run_dir + "/metrics.jsonl", start_step);
    spdlog::info("run {}: {} on {}{}, world {}, global batch {} (= {} x {} ranks x {} accumulation)", run_dir,
                 source->describe(), device.str(), autocast ? " (bf16 autocast)" : "", world, global_batch,
                 cfg.train.batch_size, world, cfg.train.grad_accum);
    spdlog::info("schedules: lr {}; weight decay {}; lambda_w {}; lambda_a {}", lr_sched->describe(),
                 wd_sched->describe(), lw_sched->describe(), la_sched->describe());
  }

  const auto val_batches = source->val_batches(cfg.train.batch_size, cfg.train.eval_batches);
  auto write_checkpoint = [&](int64_t step_done) {
    // All ranks must agree on the step and hold the same weights before rank 0 writes them (the
    // buffers were updated from each rank's own share in this step: take rank 0's, as the next
    // step would).
    sync.broadcast_buffers();
    dist.check_same({step_done, bit_fingerprint(replicated)},
                    {"the step", "the fingerprint of parameters and buffers"});
    dist.barrier("barrier before writing checkpoint");
    if (main_rank) {
      checkpoints::CheckpointData ck;
      ck.step = step_done;
      ck.model = model_tensors(model);
      ck.optimizer = optimizer.state_tensors();
      ck.extra = rng_states();
      ck.state = {{"step", step_done},
                  {"config_hash", hash},
                  {"global_batch", global_batch},
                  {"world_size", world},
                  {"bad_streak", bad_streak},
                  {"data", {{"kind", source->describe()}, {"samples_seen", step_done * global_batch}}}};
      const auto path = checkpoints::write_checkpoint(ckpt_dir, ck, cfg.checkpoint.keep_last);
      spdlog::info("checkpoint {}", path);
    }
    dist.barrier("barrier after writing checkpoint");
  };
  auto run_eval = [&](int64_t step_done) {
    if (!main_rank) return;
    const auto ev = task->evaluate(val_batches, device);
    nlohmann::json rec = {{"step", step_done}, {"val_loss", ev.loss}};
    std::string extra;
    if (!ev.metric_name.empty()) {
      rec[ev.metric_name] = ev.metric;
      extra = fmt::format(" | {} {:.4f}", ev.metric_name, ev.metric);
    }
    metrics->write(rec);
    spdlog::info("eval step {} | val_loss {:.4f}{}", step_done, ev.loss, extra);
    result.last_val_loss = ev.loss;
  };

  ProgressBar bar(steps, main_rank && core::stdout_is_terminal());
  const auto t0 = Clock::now();
  auto t_log = t0;
  int64_t units_since_log = 0;
  double sync_wait_at_log = 0.0;
  int64_t synced_at_log = 0;
  result.start_step = start_step;
  model.train();
  for (int64_t step = start_step; step < steps; ++step) {
    const double lw = lw_sched->at(step);
    const double la = la_sched->at(step);
    const double lr = lr_sched->at(step);
    const double wd = wd_sched->at(step);
    bitlinear::set_quant_lambdas(model, lw, la);
    optimizer.zero_grad();

    double loss_sum = 0.0;
    bool finite = true;
    sync.prepare();
    for (int micro = 0; micro < cfg.train.grad_accum; ++micro) {
      const auto batch =
          to_device(source->train_batch(step, micro, rank, world, cfg.train.batch_size, cfg.train.grad_accum), device);
      sync.set_sync(micro == cfg.train.grad_accum - 1);
      at::Tensor loss;
      {
        AutocastScope ac(autocast);
        loss = task->loss(batch);
      }
      if (options.loss_hook) options.loss_hook(step, micro, loss);
      (loss / cfg.train.grad_accum).backward();
      const double l = loss.detach().to(at::kDouble).item<double>();
      finite = finite && std::isfinite(l);
      loss_sum += l;
      units_since_log += task->units(batch) * world;
    }
    sync.finish();
    double grad_norm = 0.0;
    if (cfg.optim.grad_clip > 0.0) {
      grad_norm = torch::nn::utils::clip_grad_norm_(params, cfg.optim.grad_clip);
    } else {
      grad_norm = torch::nn::utils::clip_grad_norm_(params, std::numeric_limits<double>::infinity());
    }
    // Every rank must take the same decision: agree on the worst case.
    at::Tensor flags =
        at::tensor({loss_sum / cfg.train.grad_accum, (finite && std::isfinite(grad_norm)) ? 0.0 : 1.0}, at::kDouble);
    dist.all_reduce_mean_(flags, "all-reduce of the step's loss and finiteness flag");
    const double mean_loss = flags[0].item<double>();
    const bool bad = flags[1].item<double>() > 0.0;
    if (bad) {
      ++bad_streak;
      ++result.skipped_steps;
      optimizer.zero_grad();
      if (main_rank) {
        spdlog::warn(
            "step {}: non-finite loss or gradient (loss {}, grad norm {}); update skipped ({} in a row, "
            "limit {})",
            step + 1, mean_loss, grad_norm, bad_streak, cfg.train.max_bad_steps);
        metrics->write({{"step", step + 1}, {"skipped", true}, {"loss", nullptr}, {"lr", lr}});
      }
      if (bad_streak >= cfg.train.max_bad_steps) {
        throw core::UserError(
            fmt::format("training stopped at step {}: {} consecutive steps with a non-finite loss "
                        "or gradient (train.max_bad_steps = {}); lower optim.lr or check the data",
                        step + 1, bad_streak, cfg.train.max_bad_steps));
      }
    } else {
      bad_streak = 0;
      optimizer.step(lr, wd);
    }
    const int64_t done = step + 1;
    result.final_step = done;
    if (!bad) result.last_loss = mean_loss;
    bar.update(done, mean_loss);

    if (!bad && (done % cfg.train.log_every == 0 || done == steps) && main_rank) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double rate = dt > 0 ? static_cast<double>(units_since_log) / dt : 0.0;
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const int64_t synced = sync.synced_steps() - synced_at_log;
      const double sync_wait_ms = synced > 0 ? 1e3 * (sync.wait_seconds() - sync_wait_at_log) / synced : 0.0;
      sync_wait_at_log = sync.wait_seconds();
      synced_at_log = sync.synced_steps();
      spdlog::info(
          "step {}/{} | loss {:.4f} | lr {:.3e} | lambda_w {:.3f} | lambda_a {:.3f} | grad_norm {:.3f} | "
          "{:.0f} {}/s | {}",
          done, steps, mean_loss, lr, lw, la, grad_norm, rate, task->unit_name(), hms(elapsed));
      metrics->write({{"step", done},
                      {"loss", mean_loss},
                      {"lr", lr},
                      {"weight_decay", wd},
                      {"lambda_w", lw},
                      {"lambda_a", la},
                      {"grad_norm", grad_norm},
                      {std::string(task->unit_name()) + "_per_s", rate},
                      {"elapsed_s", elapsed},
                      {"sync_wait_ms", sync_wait_ms}});
      t_log = now;
      units_since_log = 0;
    }
    if ((cfg.train.eval_every > 0 && done % cfg.train.eval_every == 0) || done == steps) {
      bar.finish();
      run_eval(done);
    }
    if ((cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0) || done == steps) write_checkpoint(done);
    if (options.after_step) options.after_step(done);
  }
  bar.finish();
  if (main_rank) spdlog::info("done: {} steps, results in {}", result.final_step, run_dir);
  return result;
}

}  // namespace bitqat::training
