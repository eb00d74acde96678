#include "training/data_parallel.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/variable.h>

#include <functional>
#include <map>
#include <spdlog/spdlog.h>
#include <stdexcept>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "core/error.hpp"
#include "core/enum_name.hpp"
#include "models/factory.hpp"
#include "models/recompute.hpp"
#include "models/state_dict.hpp"
#include "training/grad_sync.hpp"
#include "training/shard_layout.hpp"
#include "training/ternary_gather.hpp"

namespace bitqat::training {
namespace {

const at::Tensor* find_tensor(const checkpoints::NamedTensors& tensors, const std::string& key) {
  for (const auto& [name, t] : tensors) {
    if (name == key) return &t;
  }
  return nullptr;
}

// The step count every optimizer state file holds ("step": int64 [1]); shards must agree.
at::Tensor step_tensor(const checkpoints::CheckpointData& ck, const std::string& dir) {
  if (ck.optimizer_shards.empty()) {
    const auto* t = find_tensor(ck.optimizer, "step");
    return t ? *t : at::Tensor();
  }
  at::Tensor first;
  for (size_t r = 0; r < ck.optimizer_shards.size(); ++r) {
    const auto* t = find_tensor(ck.optimizer_shards[r], "step");
    const auto file = dir + "/" + checkpoints::optimizer_shard_name(static_cast<int>(r),
                                                                    static_cast<int>(ck.optimizer_shards.size()));
    if (!t || t->numel() != 1) {
      throw core::UserError(fmt::format("{}: optimizer state 'step' is missing or not one number", file));
    }
    if (!first.defined()) {
      first = *t;
    } else if (t->item<int64_t>() != first.item<int64_t>()) {
      throw core::UserError(fmt::format("{}: optimizer state 'step' is {}, rank 0's shard says {}", file,
                                        t->item<int64_t>(), first.item<int64_t>()));
    }
  }
  return first;
}

void check_finite_state(const checkpoints::CheckpointData& ck, const std::string& dir) {
  if (ck.optimizer_shards.empty()) {
    models::check_finite(ck.optimizer, dir + "/optimizer.safetensors");
    return;
  }
  const int w = static_cast<int>(ck.optimizer_shards.size());
  for (int r = 0; r < w; ++r) {
    models::check_finite(ck.optimizer_shards[static_cast<size_t>(r)],
                         dir + "/" + checkpoints::optimizer_shard_name(r, w));
  }
}

// The AdamW state of a checkpoint written by any mode and world size, for this run: the step count,
// and each parameter's moments as `cut(k, whole)` makes them from their whole flat values ([numel]).
std::map<std::string, at::Tensor> optimizer_state_for(
    const checkpoints::CheckpointData& ck, const std::string& dir,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& params,
    const std::function<at::Tensor(size_t, const at::Tensor&)>& cut) {
  check_finite_state(ck, dir);
  std::map<std::string, at::Tensor> out;
  out["step"] = step_tensor(ck, dir);
  for (size_t k = 0; k < params.size(); ++k) {
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const auto key = params[k].first + suffix;
      out[key] = cut(k, whole_optimizer_tensor(ck, key, params[k].second, dir));
    }
  }
  return out;
}

// ---- dist.shard none ----------------------------------------------------------------------------

class Replicated final : public DataParallel {
 public:
  Replicated(DistContext& dist, torch::nn::Module& model, const std::vector<std::pair<std::string, at::Tensor>>& named,
             const DistConfig& cfg, const AdamWOptions& adamw)
      : dist_(dist),
        sync_(dist, model, static_cast<int64_t>(cfg.bucket_mb * 1024 * 1024), cfg.overlap),
        opt_(named, adamw),
        named_(named),
        cfg_(cfg) {}

  void broadcast_parameters() override { sync_.broadcast_parameters(); }
  void broadcast_buffers() override { sync_.broadcast_buffers(); }
  void begin_step() override { sync_.prepare(); }
  void begin_micro(bool last) override { sync_.set_sync(last); }
  void end_micro(bool /*last*/) override {}
  void finish_backward() override { sync_.finish(); }
  std::vector<at::Tensor> grads() override {
    std::vector<at::Tensor> out;
    for (const auto& [name, p] : named_) {
      if (p.grad().defined()) out.push_back(p.grad());
    }
    return out;
  }
  bool sharded() const override { return false; }
  void sum_over_ranks(at::Tensor& /*t*/) override {}
  void step(double lr, double weight_decay, const at::Tensor& skipped) override { opt_.step(lr, weight_decay, skipped); }
  void zero_grad() override { opt_.zero_grad(); }

  std::vector<std::pair<std::string, at::Tensor>> optimizer_state() const override { return opt_.state_tensors(); }

  void load_optimizer_state(const checkpoints::CheckpointData& ck, const std::string& dir) override {
    if (ck.optimizer_shards.empty()) {
      check_finite_state(ck, dir);
      opt_.load_state_tensors(std::map<std::string, at::Tensor>(ck.optimizer.begin(), ck.optimizer.end()),
                              dir + "/optimizer.safetensors", [&ck](const at::Tensor& t) { ck.release(t); });
      return;
    }
    // A sharded run's state, reassembled (one tensor at a time) into the whole tensors.
    std::vector<std::pair<std::string, std::vector<int64_t>>> params;
    for (const auto& [name, p] : named_) params.emplace_back(name, p.sizes().vec());
    opt_.load_state_tensors(optimizer_state_for(ck, dir, params,
                                                [&](size_t k, const at::Tensor& whole) {
                                                  return whole.view(named_[k].second.sizes());
                                                }),
                            dir + " (optimizer shards)");
  }

  std::string describe() const override {
    if (!dist_.active()) return "";
    int64_t bytes = 0;
    const auto bk = sync_.buckets();
    for (const auto& b : bk) bytes += b.bytes;
    return fmt::format(
        "data parallel (dist.shard none): {} gradient buckets, {:.2f} MiB all-reduced per step (dist.bucket_mb {}, "
        "overlap {})",
        bk.size(), static_cast<double>(bytes) / (1 << 20), cfg_.bucket_mb, cfg_.overlap);
  }
  double wait_seconds() const override { return sync_.wait_seconds(); }
  int64_t synced_steps() const override { return sync_.synced_steps(); }

 private:
  DistContext& dist_;
  GradSync sync_;
  AdamW opt_;
  std::vector<std::pair<std::string, at::Tensor>> named_;
  DistConfig cfg_;
};

// ---- dist.shard optimizer | gradients | parameters ----------------------------------------------

// The model's block runner calls these around each block (models/recompute.hpp).
class GatherHooks final : public models::BlockHooks {
 public:
  explicit GatherHooks(DataParallel* dp) : dp_(dp) {}
  void before_forward(size_t block) override { dp_->on_block(BlockEvent::kBeforeForward, block); }
  void after_forward(size_t block) override { dp_->on_block(BlockEvent::kAfterForward, block); }
  void before_backward(size_t block) override { dp_->on_block(BlockEvent::kBeforeBackward, block); }
  void after_backward(size_t block) override { dp_->on_block(BlockEvent::kAfterBackward, block); }

 private:
  DataParallel* dp_;
};

class Sharded final : public DataParallel {
 public:
  ~Sharded() override {
    if (runner_) runner_->hooks.reset();
  }

  Sharded(DistContext& dist, torch::nn::Module& model, const std::vector<std::pair<std::string, at::Tensor>>& named,
          const DistConfig& cfg, const AdamWOptions& adamw)
      : dist_(dist),
        mode_(cfg.shard),
        bucket_bytes_(static_cast<int64_t>(cfg.bucket_mb * 1024 * 1024)),
        named_(named) {
    world_ = dist_.active() ? dist_.world() : 1;
    rank_ = dist_.active() ? dist_.rank() : 0;
    for (const auto& [name, p] : named_) {
      if (p.scalar_type() != at::kFloat) {
        throw core::UserError(fmt::format(
            "dist.shard {}: parameter {} is {}; sharded data parallelism keeps float32 parameters",
            core::name_of(kShardModeNames, mode_), name, c10::toString(p.scalar_type())));
      }
    }
    if (dist_.active() && dist_.backend() == "gloo" && !named_.empty() && named_.front().second.is_cuda()) {
      throw core::UserError(fmt::format(
          "dist.shard {} on GPUs needs the NCCL backend (its reduce-scatter and all-gather of device tensors); "
          "dist.backend is gloo: use dist.backend: nccl (or auto)",
          core::name_of(kShardModeNames, mode_)));
    }
    if (mode_ == ShardMode::kParameters) {
      auto units = block_buckets(named_);
      unit_of_block_ = std::move(units.bucket_of_block);
      outer_ = units.rest;
      layout_ = make_shard_layout(named_, world_, units.groups);
      sync_ = std::make_unique<GradSync>(dist, model, bucket_bytes_, cfg.overlap, Collective::kReduceScatter, &layout_);
    } else {
      sync_ = std::make_unique<GradSync>(
          dist, model, bucket_bytes_, cfg.overlap,
          mode_ == ShardMode::kOptimizer ? Collective::kAllReduce : Collective::kReduceScatter);
      layout_ = make_shard_layout(named_, world_, bucket_bytes_);
    }
    if (mode_ != ShardMode::kOptimizer && sync_->layout().shard_numel != layout_.shard_numel) {
      throw std::logic_error("Sharded: the gradient and parameter layouts differ");
    }
    std::vector<std::pair<std::string, at::Tensor>> masters;
    std::vector<bool> decay;
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      const auto& lb = layout_.buckets[b];
      const auto opts = named_[lb.params.front()].second.options().requires_grad(false);
      master_.push_back(at::zeros({lb.chunk}, opts));
      grad_.push_back(mode_ == ShardMode::kOptimizer ? at::zeros({lb.chunk}, opts) : sync_->shard_grads()[b]);
    }
    master_view_.resize(layout_.params.size());
    grad_view_.resize(layout_.params.size());
    for (size_t k = 0; k < layout_.params.size(); ++k) {
      const auto& lp = layout_.params[k];
      master_view_[k] = master_[lp.bucket].narrow(0, lp.offset, lp.chunk);
      grad_view_[k] = grad_[lp.bucket].narrow(0, lp.offset, lp.chunk);
      master_view_[k].mutable_grad() = grad_view_[k];
      masters.emplace_back(lp.name, master_view_[k]);
      decay.push_back(!AdamW::no_decay(lp.name, named_[k].second));
    }
    opt_ = std::make_unique<AdamW>(masters, adamw, decay);
    units_.resize(layout_.buckets.size());
    codes_.resize(layout_.params.size());
    if (mode_ == ShardMode::kParameters) {
      // The BitLinear whose latent weight each parameter is (for 2-bit gathers).
      std::map<std::string, bitlinear::BitLinearImpl*> layers;
      for (const auto& item : model.named_modules()) {
        if (auto* l = dynamic_cast<bitlinear::BitLinearImpl*>(item.value().get())) {
          layers[item.key().empty() ? "weight" : item.key() + ".weight"] = l;
        }
      }
      for (size_t k = 0; k < named_.size(); ++k) {
        if (const auto it = layers.find(named_[k].first); it != layers.end()) codes_[k].layer = it->second;
      }
      // Every block through the gather hooks, and recomputed: a block's graph would otherwise keep the
      // weights that are released after its forward.
      runner_ = models::block_runner(model);
      if (runner_) {
        if (runner_->checkpointing.every_n != 1 && dist_.is_main()) {
          spdlog::info("dist.shard parameters: every transformer block is recomputed in the backward pass (train."
                       "activation_checkpointing {} acts as full)",
                       runner_->checkpointing.to_string());
        }
        runner_->checkpointing.every_n = 1;
        runner_->hooks = std::make_shared<GatherHooks>(this);
      }
    }
  }

  void broadcast_parameters() override {
    sync_->broadcast_parameters();
    // Every rank now holds rank 0's parameters: its masters are its chunks of them.
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < layout_.params.size(); ++k) {
      master_view_[k].copy_(take_chunk(named_[k].second.detach(), layout_.params[k], rank_));
    }
    if (mode_ == ShardMode::kParameters) {
      for (size_t u = 0; u < units_.size(); ++u) units_[u].live = true;
      release_all();
    }
  }
  void broadcast_buffers() override { sync_->broadcast_buffers(); }
  void begin_step() override {
    sync_->prepare();
    if (mode_ == ShardMode::kParameters) plan_codes();
    if (outer_ >= 0) gather(static_cast<size_t>(outer_));
  }
  void begin_micro(bool last) override { sync_->set_sync(last); }
  void end_micro(bool last) override {
    if (!last) sync_->end_micro_step();
  }
  void finish_backward() override {
    sync_->finish();
    if (mode_ == ShardMode::kParameters) {
      finish_codes();
      release_all();
      return;
    }
    if (mode_ != ShardMode::kOptimizer) return;
    // ZeRO-1: the averaged gradients are whole on every rank; keep this rank's chunks.
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < layout_.params.size(); ++k) {
      auto& p = named_[k].second;
      const auto& lp = layout_.params[k];
      if (p.grad().defined()) {
        grad_view_[k].copy_(take_chunk(p.grad(), lp, rank_));
      } else {
        grad_view_[k].zero_();
      }
      p.mutable_grad() = at::Tensor();
    }
  }
  std::vector<at::Tensor> grads() override { return grad_view_; }
  bool sharded() const override { return true; }
  void sum_over_ranks(at::Tensor& t) override { dist_.all_reduce_sum_(t, "all-reduce of the gradient norm's parts"); }

  void step(double lr, double weight_decay, const at::Tensor& skipped) override {
    opt_->step(lr, weight_decay, skipped);
    // Sharded parameters are gathered where they are used next; the others are whole on every rank:
    // the updated masters go to every rank, bucket by bucket, two on the wire at a time.
    if (mode_ == ShardMode::kParameters) return;
    at::NoGradGuard no_grad;
    const size_t n = layout_.buckets.size();
    std::vector<at::Tensor> wire(n);
    std::vector<PendingOp> ops(n);
    auto complete = [&](size_t b) {
      ops[b].wait();
      const auto& lb = layout_.buckets[b];
      const auto rows = wire[b].view({world_, lb.chunk});
      for (const size_t k : lb.params) {
        const auto& lp = layout_.params[k];
        const auto whole = rows.narrow(1, lp.offset, lp.chunk).reshape({-1});
        named_[k].second.detach().view({-1}).copy_(drop_padding(whole, lp));
      }
      wire[b] = at::Tensor();
    };
    for (size_t b = 0; b < n; ++b) {
      if (b >= 2) complete(b - 2);
      wire[b] = at::empty({world_ * layout_.buckets[b].chunk}, master_[b].options());
      ops[b] = dist_.all_gather_async(
          wire[b], master_[b],
          fmt::format("all-gather of updated parameter bucket {} of {} ({:.2f} MiB)", b, n,
                      static_cast<double>(wire[b].numel() * 4) / (1 << 20)));
    }
    for (size_t b = n >= 2 ? n - 2 : 0; b < n; ++b) complete(b);
  }

  void zero_grad() override {
    for (auto& [name, p] : named_) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
  }

  bool whole_on_every_rank() const override { return mode_ != ShardMode::kParameters; }
  void begin_eval() override {
    if (mode_ != ShardMode::kParameters) return;
    // The exact latent weights: float32, whatever the step sent (the masters have moved since the
    // step's scales were taken; the next step takes new ones).
    for (auto& c : codes_) c.active = false;
    if (outer_ >= 0) gather(static_cast<size_t>(outer_));
  }
  void end_eval() override { release_all(); }
  std::map<std::string, at::Tensor> whole_parameters_on_main() override {
    std::map<std::string, at::Tensor> out;
    if (mode_ != ShardMode::kParameters) return out;
    for (auto& c : codes_) c.active = false;
    for (size_t u = 0; u < units_.size(); ++u) {
      gather(u);
      if (dist_.is_main()) {
        for (const size_t k : layout_.buckets[u].params) out[named_[k].first] = named_[k].second.detach().cpu();
      }
      release(u);
    }
    return out;
  }
  void release_all() {
    if (mode_ != ShardMode::kParameters) return;
    for (size_t u = 0; u < units_.size(); ++u) {
      auto& unit = units_[u];
      if (unit.pending) {  // a prefetch nobody used: finish it, drop it (the masters may change before use)
        for (auto& op : unit.ops) op.wait();
        unit.wire.clear();
        unit.sent.clear();
        unit.pending = false;
      }
      release(u);
    }
  }
  void on_block(BlockEvent event, size_t block) override {
    if (mode_ != ShardMode::kParameters) return;
    const auto it = unit_of_block_.find(static_cast<int64_t>(block));
    if (it == unit_of_block_.end()) return;  // a block without trainable parameters
    const size_t u = it->second;
    switch (event) {
      case BlockEvent::kBeforeForward:
        gather(u);
        if (const auto next = unit_of_block_.find(static_cast<int64_t>(block) + 1); next != unit_of_block_.end()) {
          prefetch(next->second);
        }
        break;
      case BlockEvent::kBeforeBackward:
        gather(u);
        if (block > 0) {
          if (const auto prev = unit_of_block_.find(static_cast<int64_t>(block) - 1); prev != unit_of_block_.end()) {
            prefetch(prev->second);
          }
        }
        break;
      case BlockEvent::kAfterForward:
      case BlockEvent::kAfterBackward:
        release(u);
        break;
    }
  }

  std::vector<std::pair<std::string, at::Tensor>> optimizer_state() const override { return opt_->state_tensors(); }

  void load_optimizer_state(const checkpoints::CheckpointData& ck, const std::string& dir) override {
    std::vector<std::pair<std::string, std::vector<int64_t>>> params;
    for (const auto& lp : layout_.params) params.emplace_back(lp.name, lp.shape);
    opt_->load_state_tensors(optimizer_state_for(ck, dir, params,
                                                 [&](size_t k, const at::Tensor& whole) {
                                                   return take_chunk(whole, layout_.params[k], rank_);
                                                 }),
                             dir + (ck.optimizer_shards.empty() ? "/optimizer.safetensors" : " (optimizer shards)"));
  }

  std::string describe() const override {
    const int stage = mode_ == ShardMode::kOptimizer ? 1 : mode_ == ShardMode::kGradients ? 2 : 3;
    return fmt::format(
        "sharded data parallel (dist.shard {}, ZeRO-{}): {} ranks, each updating {} of {} parameter elements (padding "
        "{}), {} buckets; gradients {}; {}",
        core::name_of(kShardModeNames, mode_), stage, world_, layout_.shard_numel, layout_.numel, layout_.padding(),
        layout_.buckets.size(), mode_ == ShardMode::kOptimizer ? "all-reduced" : "reduce-scattered during the backward pass",
        mode_ == ShardMode::kParameters
            ? fmt::format("each of {} blocks' weights gathered before its forward and its recomputed backward, then "
                          "released",
                          unit_of_block_.size())
            : "updated parameters all-gathered");
  }
  double wait_seconds() const override { return sync_->wait_seconds(); }
  int64_t synced_steps() const override { return sync_->synced_steps(); }

 private:
  // A bucket of sharded parameters as whole tensors: all-gathered one tensor at a time (each tensor's
  // gathered buffer becomes its data, no copy), released by giving the parameters empty data.
  // Which parameters travel as 2-bit codes in this step, and their global scales.
  struct Codes {
    bitlinear::BitLinearImpl* layer = nullptr;  // the layer whose latent weight this is, if any
    bool active = false;                        // this step: codes (else float32)
    FlatGroups groups;
    at::Tensor gamma;  // float [groups.count]
    double eps = 0.0;
    double clip = -1.0;  // this step: the clipped estimator's clip, applied to the shard (else < 0)
  };

  // At the start of a step: a BitLinear's ternary weight at lambda_w = 1 with the identity estimator
  // travels as codes. Its scales come from one all-reduce of every such layer's |W| sums of rows and
  // groups (training/ternary_gather.hpp). The rebuilt weight needs finite gamma >= eps in every group
  // (it then quantizes to the sent codes); a layer below that, a ragged grouping, or anything else
  // travels in float32. Every input here is the same on
  // every rank (the config, the step's lambda, the all-reduced sums), so the ranks agree.
  void plan_codes() {
    if (!first_step_logged_ && step_float_bytes_ + step_code_bytes_ > 0 && dist_.is_main()) {
      spdlog::info("dist.shard parameters: a step gathered {} bytes of 2-bit codes and {} bytes of float32",
                   step_code_bytes_, step_float_bytes_);
      first_step_logged_ = true;
    }
    step_code_bytes_ = step_float_bytes_ = 0;
    std::vector<size_t> candidates;
    std::vector<at::Tensor> partial;
    for (size_t k = 0; k < codes_.size(); ++k) {
      auto& c = codes_[k];
      c.active = false;
      if (!c.layer) continue;
      const auto& spec = c.layer->options.quant.weight;
      if (c.layer->lambda_w() != 1.0 || spec.type != bitlinear::WeightQuant::kTernary) continue;
      const auto& lp = layout_.params[k];
      if (lp.shape.size() != 2) continue;
      const auto sg = bitlinear::scale_grouping(spec, lp.shape);
      c.groups = flat_groups(lp.numel, lp.shape[1], sg.group, sg.per_tensor);
      if (!c.groups.ok) continue;
      c.eps = spec.eps;
      candidates.push_back(k);
      partial.push_back(run_sums_of_chunk(master_view_[k], lp.begin(rank_), lp.end(rank_), c.groups));
    }
    if (candidates.empty()) return;
    at::Tensor sums = at::cat(partial);
    dist_.all_reduce_sum_(sums, "all-reduce of the ternary layers' |W| sums of rows and groups");
    sums = sums.to(at::kCPU);
    int64_t off = 0;
    for (const size_t k : candidates) {
      auto& c = codes_[k];
      const auto gamma = scales_of_runs(sums.narrow(0, off, c.groups.runs), c.groups);
      off += c.groups.runs;
      if (!gamma.isfinite().all().item<bool>() || gamma.min().item<double>() < c.eps) continue;
      c.gamma = gamma.to(master_view_[k].device());
      c.active = true;
      // The clipped estimator's mask reads the latent weight, which the rebuilt one is not: the layer
      // runs the identity estimator for this step, and finish_backward masks this rank's gradient shard
      // with |W| / max(gamma, eps) <= clip on its own latent chunk (bitlinear/estimators.cpp's mask).
      auto& spec = c.layer->options.quant.weight;
      c.clip = spec.estimator == bitlinear::Estimator::kClipped ? spec.clip : -1.0;
      if (c.clip >= 0.0) spec.estimator = bitlinear::Estimator::kIdentity;
    }
  }

  // After the step's backward: the clipped estimator's mask on the gradient shards of the layers that
  // ran with the identity one, and their estimator back.
  void finish_codes() {
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < codes_.size(); ++k) {
      auto& c = codes_[k];
      if (!c.active || c.clip < 0.0) continue;
      c.layer->options.quant.weight.estimator = bitlinear::Estimator::kClipped;
      const auto& lp = layout_.params[k];
      const int64_t b = lp.begin(rank_), e = lp.end(rank_);
      if (e > b) {
        const auto scale = gamma_of_elements(c.gamma, b, e, c.groups).clamp_min(c.eps);
        const auto mask = (master_view_[k].narrow(0, 0, e - b).abs() / scale).le(c.clip);
        grad_view_[k].narrow(0, 0, e - b).mul_(mask);
      }
      c.clip = -1.0;
    }
  }

  struct Unit {
    std::vector<at::Tensor> sent;  // per parameter of the bucket: what this rank sends
    std::vector<at::Tensor> wire;  // per parameter of the bucket: [world * chunk] (or its codes)
    std::vector<PendingOp> ops;
    bool pending = false, live = false;
  };

  void prefetch(size_t u) {
    auto& unit = units_[u];
    if (unit.pending || unit.live) return;
    const auto& lb = layout_.buckets[u];
    unit.wire.assign(lb.params.size(), at::Tensor());
    unit.ops.clear();
    unit.ops.resize(lb.params.size());
    unit.sent.assign(lb.params.size(), at::Tensor());
    for (size_t j = 0; j < lb.params.size(); ++j) {
      const size_t k = lb.params[j];
      const auto& lp = layout_.params[k];
      const auto& c = codes_[k];
      if (c.active) {
        // 2 bits per weight: this rank's codes under the global scales.
        unit.sent[j] = pack_ternary_chunk(master_view_[k], lp.begin(rank_), lp.end(rank_), c.groups, c.gamma, c.eps);
        unit.wire[j] = at::empty({world_ * unit.sent[j].numel()}, unit.sent[j].options());
        step_code_bytes_ += unit.wire[j].numel();
      } else {
        unit.sent[j] = master_view_[k];
        unit.wire[j] = at::empty({world_ * lp.chunk}, master_[u].options());
        step_float_bytes_ += unit.wire[j].numel() * 4;
      }
      unit.ops[j] = dist_.all_gather_async(
          unit.wire[j], unit.sent[j],
          fmt::format("all-gather of parameter {} ({} elements{})", lp.name, lp.numel, c.active ? ", 2-bit codes" : ""));
    }
    unit.pending = true;
  }

  void gather(size_t u) {
    auto& unit = units_[u];
    if (unit.live) return;
    prefetch(u);
    const auto& lb = layout_.buckets[u];
    at::NoGradGuard no_grad;
    for (size_t j = 0; j < lb.params.size(); ++j) {
      unit.ops[j].wait();
      const size_t k = lb.params[j];
      const auto& lp = layout_.params[k];
      const auto& c = codes_[k];
      auto& p = named_[k].second;
      p.set_data(c.active ? unpack_ternary(unit.wire[j], lp.numel, c.groups, c.gamma).view(lp.shape)
                          : unit.wire[j].narrow(0, 0, lp.numel).view(lp.shape));
      // New values: a cache keyed by (version, address), such as the GPU kernels' packed copy of the
      // weight, must not take them for the old ones (a freed buffer's address comes back).
      torch::autograd::impl::bump_version(p);
    }
    unit.wire.clear();
    unit.sent.clear();
    unit.pending = false;
    unit.live = true;
  }

  void release(size_t u) {
    auto& unit = units_[u];
    if (!unit.live) return;
    for (const size_t k : layout_.buckets[u].params) {
      auto& p = named_[k].second;
      p.set_data(at::empty({0}, p.options().requires_grad(false)));
    }
    unit.live = false;
  }

  DistContext& dist_;
  ShardMode mode_;
  int64_t bucket_bytes_;
  std::vector<std::pair<std::string, at::Tensor>> named_;
  std::unique_ptr<GradSync> sync_;
  int world_ = 1, rank_ = 0;
  ShardLayout layout_;
  std::vector<at::Tensor> master_, grad_;            // per bucket: this rank's row, [chunk]
  std::vector<at::Tensor> master_view_, grad_view_;  // per parameter: views of them
  std::unique_ptr<AdamW> opt_;
  // dist.shard parameters: the bucket of each block, the bucket of the rest (-1: none), and whether
  // each bucket's parameters are whole now.
  std::map<int64_t, size_t> unit_of_block_;
  int64_t outer_ = -1;
  std::vector<Unit> units_;
  std::vector<Codes> codes_;  // per parameter
  models::BlockRunner* runner_ = nullptr;
  int64_t step_code_bytes_ = 0, step_float_bytes_ = 0;  // gathered in the current step
  bool first_step_logged_ = false;
};

}  // namespace

at::Tensor whole_optimizer_tensor(const checkpoints::CheckpointData& ck, const std::string& key,
                                  const std::vector<int64_t>& shape, const std::string& dir) {
  const int64_t numel = c10::multiply_integers(shape);
  if (ck.optimizer_shards.empty()) {
    const auto* t = find_tensor(ck.optimizer, key);
    const auto file = dir + "/optimizer.safetensors";
    if (!t) {
      throw core::UserError(fmt::format(
          "{}: optimizer state '{}' is missing (was the checkpoint written by a different model?)", file, key));
    }
    if (t->numel() != numel) {
      throw core::UserError(fmt::format("{}: optimizer state '{}' has {} elements, the model needs {}", file, key,
                                        t->numel(), numel));
    }
    return t->reshape({-1});
  }
  const int w = static_cast<int>(ck.optimizer_shards.size());
  const int64_t chunk = shard_chunk(shape, w);
  std::vector<at::Tensor> parts;
  for (int r = 0; r < w; ++r) {
    const auto* t = find_tensor(ck.optimizer_shards[static_cast<size_t>(r)], key);
    const auto file = dir + "/" + checkpoints::optimizer_shard_name(r, w);
    if (!t) {
      throw core::UserError(fmt::format(
          "{}: optimizer state '{}' is missing (was the checkpoint written by a different model?)", file, key));
    }
    if (t->dim() != 1 || t->numel() != chunk) {
      throw core::UserError(fmt::format(
          "{}: optimizer state '{}' has shape [{}]; a shard of a {}-element tensor over {} ranks is [{}]", file, key,
          fmt::join(t->sizes(), ", "), numel, w, chunk));
    }
    parts.push_back(*t);
  }
  return at::cat(parts).narrow(0, 0, numel);
}

std::unique_ptr<DataParallel> make_data_parallel(DistContext& dist, torch::nn::Module& model,
                                                 const std::vector<std::pair<std::string, at::Tensor>>& named,
                                                 const DistConfig& cfg, const AdamWOptions& adamw) {
  switch (cfg.shard) {
    case ShardMode::kNone:
      return std::make_unique<Replicated>(dist, model, named, cfg, adamw);
    case ShardMode::kOptimizer:
    case ShardMode::kGradients:
    case ShardMode::kParameters:
      return std::make_unique<Sharded>(dist, model, named, cfg, adamw);
  }
  throw std::logic_error("make_data_parallel: unknown dist.shard");
}

}  // namespace bitqat::training
