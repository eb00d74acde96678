#include "training/trainer.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/record_function.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "data/source.hpp"
#include "interop/init_source.hpp"
#include "models/factory.hpp"
#include "models/recompute.hpp"
#include "models/state_dict.hpp"
#include "schedules/schedule.hpp"
#include "training/distill.hpp"
#include "training/distributed.hpp"
#include "training/ema.hpp"
#include "training/gpu_status.hpp"
#include "training/data_parallel.hpp"
#include "training/memory_plan.hpp"
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
  if (dc.type == DeviceType::kCuda && !has_cuda) {
    throw core::UserError("device.type = cuda, but no CUDA device is visible; use device.type: auto or cpu");
  }
  if (dc.type == DeviceType::kCpu || !has_cuda) return at::Device(at::kCPU);
  const int n = static_cast<int>(torch::cuda::device_count());
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
}

// A GPU batch is staged in pinned host memory (the caching host allocator keeps it alive until
// the copy has run) and copied asynchronously on the current stream. The step makes no host sync,
// so the host prepares and queues the next micro-batch while the device still computes this one.
data::Batch to_device(const data::Batch& b, const at::Device& d) {
  if (d.is_cpu()) return b;
  auto copy = [&](const at::Tensor& t) { return t.pin_memory().to(d, /*non_blocking=*/true); };
  return data::Batch{copy(b.inputs), copy(b.targets), b.rows};
}

std::string hms(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return fmt::format("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

struct Schedules {
  std::unique_ptr<schedules::Schedule> lr, wd, lambda_w, lambda_a;
};

// Everything a run holds between steps.
struct Run {
  Run(const Config& c, const TrainOptions& o, const at::Device& d)
      : cfg(c),
        options(o),
        device(d),
        dist(dist_env_from_environment(), core::name_of(kBackendNames, c.dist.backend),
             std::chrono::seconds(c.dist.timeout_s), d) {}

  const Config& cfg;
  const TrainOptions& options;
  at::Device device;
  DistContext dist;
  bool autocast = false;
  std::string run_dir, ckpt_dir, hash;
  std::unique_ptr<data::Source> source;
  std::unique_ptr<Task> task;
  std::vector<std::pair<std::string, at::Tensor>> named;  // trainable parameters
  std::vector<at::Tensor> replicated;  // parameters, buffers and averages: bit-identical across ranks
  std::unique_ptr<DataParallel> dp;  // the optimizer and the gradients' exchange (dist.shard)
  std::unique_ptr<Ema> ema;          // train.ema
  Schedules sched;
  std::unique_ptr<MetricsWriter> metrics;
  std::vector<data::Batch> val_batches;
  int64_t global_batch = 0;
  int64_t start_step = 0;
  int64_t bad_streak = 0;
  double lambda_w = 1.0, lambda_a = 1.0;  // the model's lambdas: those of the last step run
  bool main() const { return dist.is_main(); }
};

// ---- set-up and resume --------------------------------------------------------------------------

// The parameters' average from the checkpoint. A checkpoint without one (a run that trained without
// train.ema) resumes exactly only while the average is still the parameters (step <= start_step).
void resume_ema(Run& r, const checkpoints::CheckpointData& ck, const std::string& latest) {
  const auto& cfg = r.cfg.train.ema;
  if (!cfg.enabled) {
    if (ck.has_ema && r.main()) {
      spdlog::warn("{} holds averaged weights (ema.safetensors); this config has no train.ema, so they are dropped",
                   latest);
    }
    return;
  }
  r.ema = std::make_unique<Ema>(r.named, cfg.decay, cfg.start_step);
  if (!ck.has_ema) {
    if (ck.step > cfg.start_step) {
      throw core::UserError(fmt::format(
          "{} holds no averaged weights (the run trained without train.ema) and {}, before its step {}: the "
          "average cannot be recovered; set train.ema.start_step to {} or later to start it from here",
          latest, cfg.node.describe("start_step"), ck.step, ck.step));
    }
    return;  // the average is still the parameters
  }
  const std::string origin = latest + "/ema.safetensors";
  models::check_finite(ck.ema, origin);
  r.ema->load(std::map<std::string, at::Tensor>(ck.ema.begin(), ck.ema.end()), origin);
}

// Weights, optimizer state, RNG and counters from the newest checkpoint of this run.
void resume_from(Run& r, const std::string& latest) {
  const auto ck = checkpoints::read_checkpoint(latest);
  const std::string spath = latest + "/state.json";
  const std::string saved_hash = checkpoints::json_string(ck.state, "config_hash", spath);
  if (saved_hash != r.hash && saved_hash != r.cfg.legacy_compat_hash()) {
    throw core::UserError(
        fmt::format("{}: written with config hash {}, this config has {}: the model or "
                    "quantization settings differ, so its tensors do not fit; resume with "
                    "the run's own config ({}/config.resolved.yaml)",
                    latest, saved_hash, r.hash, r.run_dir));
  }
  const int64_t steps = r.cfg.train.steps;
  if (steps < ck.step) {
    throw core::UserError(fmt::format(
        "{} = {} is below the step of the checkpoint to resume, {} ({}): a run cannot be trained back; raise "
        "train.steps above {} to continue it, or evaluate / export the checkpoint as it is",
        r.cfg.root.child("train").where("steps"), steps, ck.step, latest, ck.step));
  }
  r.start_step = ck.step;
  r.bad_streak = checkpoints::json_int(ck.state, "bad_streak", spath, 0, checkpoints::kMaxStep, 0);
  const int64_t saved_gb = checkpoints::json_int(ck.state, "global_batch", spath, 1, INT64_MAX, r.global_batch);
  const int64_t saved_world = checkpoints::json_int(ck.state, "world_size", spath, 1, 1 << 20, 1);
  const int64_t saved_steps = checkpoints::json_int(ck.state, "train_steps", spath, 1, checkpoints::kMaxStep, steps);
  if (steps == ck.step) return;           // nothing to train: train() says so; nothing else is read or written
  r.task->check_resume(ck.state, spath);  // e.g. the distillation teacher is the checkpoint's
  // The tensors view the mapped files: each is copied into place, then its pages are released.
  const auto release = [&ck](const at::Tensor& t) { ck.release(t); };
  models::load_model_tensors(
      r.task->module(),
      models::lazy_tensors(std::map<std::string, at::Tensor>(ck.model.begin(), ck.model.end()), release),
      latest + "/model.safetensors");
  r.dp->load_optimizer_state(ck, latest);
  resume_ema(r, ck, latest);
  std::map<std::string, at::Tensor> extra(ck.extra.begin(), ck.extra.end());
  restore_rng_states(extra, latest + "/extra.safetensors");
  if (!r.main()) return;
  if (saved_steps != steps) {
    // Schedules are functions of (step, train.steps): a longer run stretches every decay and ramp.
    spdlog::warn(
        "resuming a run planned for train.steps = {} with train.steps = {}: the schedules' horizon changes, so "
        "from step {} on lr {}; lambda_w {}; lambda_a {}",
        saved_steps, steps, ck.step, r.sched.lr->describe(), r.sched.lambda_w->describe(),
        r.sched.lambda_a->describe());
  }
  // Every rank holds the whole model and optimizer state, and a batch is a function of the global
  // row index, so another world size resumes exactly when the global batch is the same.
  if (saved_world != r.dist.world() && saved_gb == r.global_batch) {
    spdlog::info(
        "resuming a {}-rank run on {} ranks with the same global batch {}: the data order continues "
        "unchanged",
        saved_world, r.dist.world(), r.global_batch);
  }
  if (saved_gb != r.global_batch) {
    spdlog::warn(
        "resuming with global batch {} (checkpoint: {}): the data order continues by step, but the "
        "run no longer matches one uninterrupted run",
        r.global_batch, saved_gb);
  }
  spdlog::info("resumed from {} at step {}", latest, r.start_step);
  if (!r.cfg.init_from.empty()) {
    spdlog::info("init_from = {} is not read: the resumed checkpoint holds the weights", r.cfg.init_from);
  }
}

// A config whose memory plan (training/memory_plan.hpp) exceeds the device's memory is a config error,
// found before anything is allocated: the same check and message as `bitqat plan`. The limit is
// device.memory_gb, else the run's GPU, else this machine's RAM.
void check_memory_fits(const Config& cfg, const at::Device& device, int world) {
  check_memory_plan(memory_plan(cfg, world), memory_limit(cfg, device));
}

// train.activation_checkpointing on the model's block runner (the config refuses it for a model
// without transformer blocks).
void set_activation_checkpointing(torch::nn::Module& model, const models::Checkpointing& policy) {
  auto* runner = models::block_runner(model);
  if (!runner) {
    if (policy.none()) return;
    throw std::logic_error("train.activation_checkpointing is set on a model without transformer blocks");
  }
  runner->checkpointing = policy;
}

std::unique_ptr<Run> set_up(const Config& cfg, const TrainOptions& options) {
  const auto env = dist_env_from_environment();
  if (cfg.device.threads > 0) at::set_num_threads(cfg.device.threads);
  auto r = std::make_unique<Run>(cfg, options, pick_device(cfg.device, env.local_rank));
  r->autocast = r->device.is_cuda() && cfg.device.precision != Precision::kFp32;
  if (r->device.is_cpu() && cfg.device.precision == Precision::kBf16) {
    throw core::ConfigError(fmt::format("{} = bf16: bf16 autocast is for GPUs; use fp32 (or auto) on CPU",
                                        cfg.root.child("device").where("precision")));
  }
  r->run_dir = cfg.run.run_dir();
  r->ckpt_dir = r->run_dir + "/checkpoints";

  // Refuse to clobber: a run directory with checkpoints is resumed or renamed, never overwritten.
  const auto latest = checkpoints::find_latest_checkpoint(r->ckpt_dir);
  if (options.resume && !latest) {
    throw core::UserError(
        fmt::format("--resume: no complete checkpoint in {} (nothing to resume; drop --resume "
                    "to start this run from scratch)",
                    r->ckpt_dir));
  }
  if (!options.resume && latest) {
    throw core::UserError(
        fmt::format("{} already holds checkpoints (newest: {}); pass --resume to continue it, or "
                    "choose another run.name (--set run.name=...)",
                    r->run_dir, *latest));
  }

  check_memory_fits(cfg, r->device, r->dist.world());
  torch::manual_seed(cfg.run.seed);
  r->source = data::make_source(cfg.data, cfg.run.seed);
  r->task = make_task(cfg, r->device);
  if (cfg.distill.enabled) r->task = make_distill_task(std::move(r->task), cfg, r->device, r->dist);
  auto& model = r->task->module();
  set_activation_checkpointing(model, cfg.train.activation_checkpointing);
  for (const auto& item : model.named_parameters(true)) {
    if (item.value().requires_grad()) r->named.emplace_back(item.key(), item.value());
  }
  r->dp = make_data_parallel(r->dist, model, r->named, cfg.dist,
                             AdamWOptions{cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps});

  const int64_t steps = cfg.train.steps;
  r->sched.lr = schedules::make_schedule(cfg.optim.lr, schedules::ScheduleRole::kLearningRate, steps);
  r->sched.wd = schedules::make_schedule(cfg.optim.weight_decay, schedules::ScheduleRole::kWeightDecay, steps);
  r->sched.lambda_w = schedules::make_schedule(cfg.quant.lambda_w, schedules::ScheduleRole::kLambda, steps);
  r->sched.lambda_a = schedules::make_schedule(cfg.quant.lambda_a, schedules::ScheduleRole::kLambda, steps);

  r->global_batch = cfg.train.batch_size * r->dist.world() * cfg.train.grad_accum;
  r->hash = cfg.compat_hash();
  if (latest) {
    resume_from(*r, *latest);
    if (r->start_step == steps) return r;  // nothing to train
  } else if (!cfg.init_from.empty()) {
    // Only rank 0 reads the source (once: a distillation teacher read from it is copied); the broadcast
    // below brings its weights to the others.
    if (!init_student_from_teacher(*r->task, cfg)) {
      run_on_main(
          r->dist, [&] { interop::init_model_from(cfg.init_from, model, cfg.root.where("init_from")); },
          "reading init_from");
    }
  }

  r->dp->broadcast_parameters();
  if (cfg.train.ema.enabled && !r->ema) {
    r->ema = std::make_unique<Ema>(r->named, cfg.train.ema.decay, cfg.train.ema.start_step);
  }
  for (const auto& [n, p] : r->named) r->replicated.push_back(p);
  for (const auto& b : model.buffers(true)) r->replicated.push_back(b);
  if (r->ema) {
    for (const auto& [name, e] : r->ema->tensors()) r->replicated.push_back(e);
  }
  if (const auto what = r->dp->describe(); !what.empty() && r->main()) spdlog::info("{}", what);
  if (r->main()) {
    fs::create_directories(r->run_dir);
    core::write_file_atomic(r->run_dir + "/config.resolved.yaml", core::to_yaml_string(cfg.resolved()));
    r->metrics = std::make_unique<MetricsWriter>(r->run_dir + "/metrics.jsonl", r->start_step, cfg.log.tensorboard);
    spdlog::info("run {}: {} on {}{}, world {}, global batch {} (= {} x {} ranks x {} accumulation)", r->run_dir,
                 r->source->describe(), r->device.str(), r->autocast ? " (bf16 autocast)" : "", r->dist.world(),
                 r->global_batch, cfg.train.batch_size, r->dist.world(), cfg.train.grad_accum);
    spdlog::info("schedules: lr {}; weight decay {}; lambda_w {}; lambda_a {}", r->sched.lr->describe(),
                 r->sched.wd->describe(), r->sched.lambda_w->describe(), r->sched.lambda_a->describe());
    if (!cfg.train.activation_checkpointing.none()) {
      spdlog::info("activation checkpointing: {} (blocks recomputed in the backward pass)",
                   cfg.train.activation_checkpointing.to_string());
    }
    if (r->device.is_cuda()) {
      const auto unverified =
          gpu_status_warning(gpu_paths_of(cfg, r->dist.world(), r->autocast), gpu_checks_passed());
      if (!unverified.empty()) spdlog::warn("{} device.type: cpu runs the tested CPU path.", unverified);
    }
  }
  r->val_batches = r->source->val_batches(cfg.train.batch_size, cfg.train.eval_batches);
  return r;
}

// ---- one optimizer step -------------------------------------------------------------------------

// What a step leaves on the device, read by the host only when the step is settled (at log,
// evaluation and checkpoint steps and at the end): no host sync inside a step.
struct StepOutcome {
  int64_t done = 0;                     // 1-based step number
  at::Tensor flags;                     // double [3] on the device: mean loss over micro-batches and ranks; > 0 when
                                        // some rank saw a non-finite loss or gradient (the update was skipped on the
                                        // device); the gradient norm before clipping (NaN when it was not computed);
                                        // then the task's loss parts (part_names), means likewise
  std::vector<std::string> part_names;  // the task's loss parts (loss_ce, loss_kd, ...), in flags[3...]
  double lr = 0.0, wd = 0.0, lambda_w = 0.0, lambda_a = 0.0;  // this step's schedule values
  int64_t units = 0;                                          // tokens or samples of the global batch
};

// The step as the host sees it once settled.
struct Settled {
  StepOutcome o;
  double loss = 0.0, grad_norm = 0.0;
  bool bad = false;
  std::vector<std::pair<std::string, double>> parts;  // the task's loss parts
};

bool due(int64_t done, int64_t every, int64_t steps) { return (every > 0 && done % every == 0) || done == steps; }

// The global L2 norm of the gradients (one multi-tensor pass)
// and, when max_norm > 0, the gradients scaled by min(1, max_norm / (norm + 1e-6)) as
// torch.nn.utils.clip_grad_norm_ does, all on the device. Returns the norm as a double scalar.
// Sharded gradients: the squares of the ranks' norms are summed over the ranks (one all-reduce).
at::Tensor grad_norm_clip_(DataParallel& dp, const std::vector<at::Tensor>& grads, double max_norm) {
  at::Tensor total;
  if (dp.sharded()) {
    // Every rank takes part in the all-reduce, whatever it holds.
    at::Tensor sq = grads.empty() ? at::zeros({}, at::kDouble)
                                  : at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).square().sum();
    dp.sum_over_ranks(sq);
    total = sq.sqrt();
  } else {
    if (grads.empty()) return at::zeros({}, at::kDouble);
    total = at::linalg_vector_norm(at::stack(at::_foreach_norm(grads, 2)), 2);
  }
  if (max_norm > 0.0 && !grads.empty()) {
    at::_foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_max(1.0).to(grads.front().scalar_type()));
  }
  return total.to(at::kDouble);
}

// Micro-batches with gradient accumulation, the gradient all-reduce, clipping, the finiteness
// flag every rank agrees on, then the update, which the device skips when the flag is set.
StepOutcome run_step(Run& r, int64_t step) {
  const auto& cfg = r.cfg;
  StepOutcome o;
  o.done = step + 1;
  o.lambda_w = r.sched.lambda_w->at(step);
  o.lambda_a = r.sched.lambda_a->at(step);
  o.lr = r.sched.lr->at(step);
  o.wd = r.sched.wd->at(step);
  bitlinear::set_quant_lambdas(r.task->module(), o.lambda_w, o.lambda_a);
  r.lambda_w = o.lambda_w;
  r.lambda_a = o.lambda_a;
  r.dp->zero_grad();

  at::Tensor loss_sum;
  at::Tensor part_sums;  // the task's loss parts summed on the device
  r.dp->begin_step();
  for (int micro = 0; micro < cfg.train.grad_accum; ++micro) {
    const auto batch = [&] {
      RECORD_FUNCTION("bitqat::train_batch", std::vector<c10::IValue>());
      return to_device(
          r.source->train_batch(step, micro, r.dist.rank(), r.dist.world(), cfg.train.batch_size, cfg.train.grad_accum),
          r.device);
    }();
    const bool last = micro == cfg.train.grad_accum - 1;
    r.dp->begin_micro(last);
    at::Tensor loss;
    {
      RECORD_FUNCTION("bitqat::forward", std::vector<c10::IValue>());
      AutocastScope ac(r.autocast);
      loss = r.task->loss(batch);
    }
    if (r.options.loss_hook) r.options.loss_hook(step, micro, loss);
    (loss / cfg.train.grad_accum).backward();
    r.dp->end_micro(last);
    const auto l = loss.detach().to(at::kDouble);
    loss_sum = loss_sum.defined() ? loss_sum + l : l;
    if (const auto parts = r.task->loss_parts(); !parts.empty()) {
      std::vector<at::Tensor> values;
      for (const auto& [name, v] : parts) values.push_back(v.detach().to(at::kDouble));
      part_sums = part_sums.defined() ? part_sums + at::stack(values) : at::stack(values);
      if (micro == 0) {
        for (const auto& [name, v] : parts) o.part_names.push_back(name);
      }
    }
    o.units += r.task->units(batch) * r.dist.world();
  }
  r.dp->finish_backward();
  std::vector<at::Tensor> grads = r.dp->grads();
  at::Tensor norm, bad;
  if (cfg.optim.grad_clip > 0.0 || due(o.done, cfg.train.log_every, cfg.train.steps)) {
    norm = grad_norm_clip_(*r.dp, grads, cfg.optim.grad_clip);
    bad = norm.isfinite().logical_not();
  } else {
    // Only finiteness is needed: one multi-tensor check (scaling by exactly 1 changes nothing).
    auto found = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(r.device));
    if (!grads.empty()) at::_amp_foreach_non_finite_check_and_unscale_(grads, found, at::ones_like(found));
    norm = at::full({}, std::numeric_limits<double>::quiet_NaN(), found.options().dtype(at::kDouble));
    bad = found.gt(0);
  }
  bad = bad.logical_or(loss_sum.isfinite().logical_not()).to(at::kDouble);
  // Every rank must take the same decision: agree on the worst case.
  o.flags = at::stack({loss_sum / cfg.train.grad_accum, bad, norm});
  if (part_sums.defined()) o.flags = at::cat({o.flags, part_sums / cfg.train.grad_accum});
  r.dist.all_reduce_mean_(o.flags, "all-reduce of the step's loss, finiteness flag and loss parts");
  RECORD_FUNCTION("bitqat::optimizer_step", std::vector<c10::IValue>());
  const auto skipped = o.flags[1].gt(0).to(at::kFloat);
  r.dp->step(o.lr, o.wd, skipped);
  if (r.ema) r.ema->update(o.done, skipped);
  return o;
}

// Reads the pending steps' flags in one host transfer, reports skipped steps and stops the run
// when train.max_bad_steps consecutive steps were skipped.
std::vector<Settled> settle(Run& r, std::vector<StepOutcome>& pending) {
  std::vector<Settled> out;
  if (pending.empty()) return out;
  std::vector<at::Tensor> flags;
  for (const auto& o : pending) flags.push_back(o.flags);
  const auto host = at::cat(flags).cpu();  // one transfer
  const auto* f = host.data_ptr<double>();
  for (size_t i = 0; i < pending.size(); ++i) {
    Settled s;
    s.o = std::move(pending[i]);
    s.loss = f[0];
    s.bad = f[1] > 0.0;
    s.grad_norm = f[2];
    for (size_t k = 0; k < s.o.part_names.size(); ++k) s.parts.emplace_back(s.o.part_names[k], f[3 + k]);
    f += 3 + s.o.part_names.size();
    const auto& cfg = r.cfg;
    if (!s.bad) {
      r.bad_streak = 0;
      out.push_back(std::move(s));
      continue;
    }
    ++r.bad_streak;
    if (r.main()) {
      spdlog::warn(
          "step {}: non-finite loss or gradient (loss {}, grad norm {}); update skipped ({} in a row, limit {})",
          s.o.done, s.loss, s.grad_norm, r.bad_streak, cfg.train.max_bad_steps);
      r.metrics->write({{"step", s.o.done}, {"skipped", true}, {"loss", nullptr}, {"lr", s.o.lr}});
    }
    if (r.bad_streak >= cfg.train.max_bad_steps) {
      const int64_t now = pending.back().done;
      throw core::UserError(fmt::format(
          "training stopped at step {}: {} consecutive steps with a non-finite loss or gradient (steps {} to {}; "
          "train.max_bad_steps = {}); lower optim.lr or check the data",
          now, r.bad_streak, s.o.done - r.bad_streak + 1, s.o.done, cfg.train.max_bad_steps));
    }
    out.push_back(std::move(s));
  }
  pending.clear();
  return out;
}

// ---- logging ------------------------------------------------------------------------------------

// One line and one metrics record per logged step, with the throughput since the previous one.
class StepLog {
 public:
  explicit StepLog(Run& r) : r_(r), t0_(Clock::now()), t_log_(t0_) {}

  void record(const Settled& s) {
    const auto& o = s.o;
    const int64_t done = o.done;
    units_ += o.units;
    if (s.bad || !r_.main() || !due(done, r_.cfg.train.log_every, r_.cfg.train.steps)) return;
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - t_log_).count();
    const double rate = dt > 0 ? static_cast<double>(units_) / dt : 0.0;
    const double elapsed = std::chrono::duration<double>(now - t0_).count();
    const int64_t synced = r_.dp->synced_steps() - synced_at_log_;
    const double sync_wait_ms = synced > 0 ? 1e3 * (r_.dp->wait_seconds() - sync_wait_at_log_) / synced : 0.0;
    sync_wait_at_log_ = r_.dp->wait_seconds();
    synced_at_log_ = r_.dp->synced_steps();
    const char* unit = r_.task->unit_name();
    std::string parts;  // " (loss_ce 3.1000, loss_kd 0.2000)" when the task has parts
    for (const auto& [name, v] : s.parts) parts += fmt::format("{}{} {:.4f}", parts.empty() ? " (" : ", ", name, v);
    if (!parts.empty()) parts += ")";
    spdlog::info(
        "step {}/{} | loss {:.4f}{} | lr {:.3e} | lambda_w {:.3f} | lambda_a {:.3f} | grad_norm {:.3f} | "
        "{:.0f} {}/s | {}",
        done, r_.cfg.train.steps, s.loss, parts, o.lr, o.lambda_w, o.lambda_a, s.grad_norm, rate, unit, hms(elapsed));
    nlohmann::json rec = {{"step", done},
                          {"loss", s.loss},
                          {"lr", o.lr},
                          {"weight_decay", o.wd},
                          {"lambda_w", o.lambda_w},
                          {"lambda_a", o.lambda_a},
                          {"grad_norm", s.grad_norm},
                          {std::string(unit) + "_per_s", rate},
                          {"elapsed_s", elapsed},
                          {"sync_wait_ms", sync_wait_ms}};
    for (const auto& [name, v] : s.parts) rec[name] = v;
    r_.metrics->write(rec);
    t_log_ = now;
    units_ = 0;
  }

 private:
  Run& r_;
  Clock::time_point t0_, t_log_;
  int64_t units_ = 0;
  double sync_wait_at_log_ = 0.0;
  int64_t synced_at_log_ = 0;
};

// ---- evaluation and checkpoints -----------------------------------------------------------------

std::optional<double> evaluate(Run& r, int64_t done) {
  // Sharded parameters are gathered block by block as the forward goes: every rank runs it.
  if (!r.main() && r.dp->whole_on_every_rank()) return std::nullopt;
  r.dp->begin_eval();
  const auto ev = r.task->evaluate(r.val_batches, r.device);
  r.dp->end_eval();
  if (!r.main()) return std::nullopt;
  nlohmann::json rec = {{"step", done}, {"val_loss", ev.loss}};
  std::string extra;
  if (!ev.metric_name.empty()) {
    rec[ev.metric_name] = ev.metric;
    extra = fmt::format(" | {} {:.4f}", ev.metric_name, ev.metric);
  }
  r.metrics->write(rec);
  spdlog::info("eval step {} | val_loss {:.4f}{}", done, ev.loss, extra);
  return ev.loss;
}

// Sharded optimizer state: every rank writes its shard into the directory the main rank began, and
// the ranks agree on the outcome (a rank that could not write, e.g. a full disk, fails them all with
// its reason on its own log, and nothing is renamed into place). Returns the files, in rank order, on
// the main rank; nothing when the state is not sharded.
std::vector<checkpoints::ShardFile> write_optimizer_shards(Run& r, int64_t done) {
  if (!r.dp->sharded()) return {};
  const int world = r.dist.active() ? r.dist.world() : 1;
  const int rank = r.dist.active() ? r.dist.rank() : 0;
  std::string tmp;
  run_on_main(r.dist, [&] { checkpoints::begin_checkpoint(r.ckpt_dir, done); }, "starting the checkpoint directory");
  tmp = r.ckpt_dir + fmt::format("/.tmp-step_{:08d}", done);
  checkpoints::ShardFile mine;
  std::exception_ptr error;
  try {
    const auto state = r.dp->optimizer_state();
    models::check_finite(state, fmt::format("training at step {} (no checkpoint was written)", done));
    mine = checkpoints::write_checkpoint_shard(tmp, rank, world, state);
  } catch (const core::UserError&) {
    error = std::current_exception();
  } catch (const std::filesystem::filesystem_error& e) {
    error = std::make_exception_ptr(
        core::UserError(fmt::format("rank {}: writing its optimizer shard into {} failed: {}", rank, tmp, e.what())));
  }
  at::Tensor table = at::zeros({3 * world}, at::kLong);
  table[3 * rank] = mine.size;
  table[3 * rank + 1] = static_cast<int64_t>(mine.crc32);
  table[3 * rank + 2] = error ? 1 : 0;
  r.dist.all_reduce_sum_(table, "agreement on the optimizer shards written");
  if (error) std::rethrow_exception(error);
  const auto t = table.cpu();
  const auto* v = t.data_ptr<int64_t>();
  std::vector<checkpoints::ShardFile> files;
  for (int k = 0; k < world; ++k) {
    if (v[3 * k + 2] != 0) {
      throw core::UserError(fmt::format(
          "rank {}: rank {} could not write its optimizer shard of step {} (its log says why); no checkpoint was written",
          rank, k, done));
    }
    files.push_back({checkpoints::optimizer_shard_name(k, world), v[3 * k], static_cast<uint32_t>(v[3 * k + 1])});
  }
  return files;
}

void checkpoint(Run& r, int64_t done) {
  // dist.shard parameters: the whole weights for model.safetensors, gathered block by block to the
  // main rank's host memory (every rank takes part).
  const auto whole = r.dp->whole_parameters_on_main();
  // All ranks must agree on the step and hold the same weights before rank 0 writes them (the
  // buffers were updated from each rank's own share in this step: take rank 0's, as the next step
  // would).
  r.dp->broadcast_buffers();
  r.dist.check_same({done, bit_fingerprint(r.replicated)}, {"the step", "the fingerprint of parameters, buffers and averages"});
  r.dist.barrier("barrier before writing checkpoint");
  const auto shard_files = write_optimizer_shards(r, done);
  if (r.main()) {
    checkpoints::CheckpointData ck;
    ck.step = done;
    ck.model = models::model_tensors(r.task->module(), /*to_cpu=*/false);  // to the host one at a time
    for (auto& [name, t] : ck.model) {
      if (const auto it = whole.find(name); it != whole.end()) t = it->second;
    }
    if (shard_files.empty()) ck.optimizer = r.dp->optimizer_state();
    ck.optimizer_shard_files = shard_files;
    if (r.ema) ck.ema = r.ema->tensors();
    // Never write a checkpoint that could not be read back (non-finite steps are skipped, so this
    // guards against what slipped past them).
    const auto where = fmt::format("training at step {} (no checkpoint was written)", done);
    models::check_finite(ck.model, where);
    models::check_finite(ck.optimizer, where);
    models::check_finite(ck.ema, where);
    ck.extra = rng_states();
    ck.state = {{"step", done},
                {"config_hash", r.hash},
                {"train_steps", r.cfg.train.steps},
                {"lambda_w", r.lambda_w},
                {"lambda_a", r.lambda_a},
                {"global_batch", r.global_batch},
                {"world_size", r.dist.world()},
                {"dist_shard", core::name_of(kShardModeNames, r.cfg.dist.shard)},
                {"bad_streak", r.bad_streak},
                {"data", {{"kind", r.source->describe()}, {"samples_seen", done * r.global_batch}}}};
    // Held in a local: items() of a temporary would dangle inside the loop.
    const auto task_state = r.task->checkpoint_state();
    for (const auto& [key, value] : task_state.items()) ck.state[key] = value;
    spdlog::info("checkpoint {}", checkpoints::write_checkpoint(r.ckpt_dir, ck, r.cfg.checkpoint.keep_last));
  }
  r.dist.barrier("barrier after writing checkpoint");
}

}  // namespace

TrainResult train(const Config& cfg, const TrainOptions& options) {
  auto run = set_up(cfg, options);
  Run& r = *run;
  if (options.after_setup) options.after_setup();
  TrainResult result;
  result.run_dir = r.run_dir;
  result.start_step = r.start_step;
  result.final_step = r.start_step;
  const int64_t steps = cfg.train.steps;
  if (r.start_step == steps) {
    result.nothing_to_train = true;
    if (r.main()) {
      spdlog::info("{} is already at step {} = train.steps: nothing to train (raise train.steps to continue it)",
                   r.run_dir, steps);
    }
    return result;
  }
  if (cfg.train.eval_at_start && r.start_step == 0) {
    // The starting point at step 0's lambdas: with a ramp from 0, the full-precision source itself.
    bitlinear::set_quant_lambdas(r.task->module(), r.sched.lambda_w->at(0), r.sched.lambda_a->at(0));
    evaluate(r, 0);
  }
  ProgressBar bar(steps, r.main() && core::stdout_is_terminal());
  StepLog log(r);
  std::vector<StepOutcome> pending;
  r.task->module().train();
  for (int64_t step = r.start_step; step < steps; ++step) {
    const auto before = r.dist.collectives();
    pending.push_back(run_step(r, step));
    result.step_collectives += r.dist.collectives() - before;
    const int64_t done = step + 1;
    result.final_step = done;
    const bool eval_due = due(done, cfg.train.eval_every, steps);
    const bool ckpt_due = due(done, cfg.checkpoint.every, steps);
    if (eval_due || ckpt_due || due(done, cfg.train.log_every, steps)) {
      for (const auto& s : settle(r, pending)) {
        if (s.bad) {
          ++result.skipped_steps;
        } else {
          result.last_loss = s.loss;
        }
        log.record(s);
      }
    }
    bar.update(done, result.last_loss);
    if (eval_due) {
      bar.finish();
      if (const auto v = evaluate(r, done)) result.last_val_loss = v;
    }
    if (ckpt_due) checkpoint(r, done);
    if (options.after_step) options.after_step(done);
  }
  bar.finish();
  if (r.main() && r.dist.active()) {
    const int64_t n = result.final_step - result.start_step;
    spdlog::info("collectives per step (mean of {}): {}", n, describe_collectives(result.step_collectives, n));
  }
  if (r.main()) spdlog::info("done: {} steps, results in {}", result.final_step, r.run_dir);
  return result;
}

}  // namespace bitqat::training
