#include "training/data_parallel.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <map>

#include "core/error.hpp"
#include "core/enum_name.hpp"
#include "models/state_dict.hpp"
#include "training/grad_sync.hpp"
#include "training/shard_layout.hpp"

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
    check_finite_state(ck, dir);
    const auto release = [&ck](const at::Tensor& t) { ck.release(t); };
    if (ck.optimizer_shards.empty()) {
      opt_.load_state_tensors(std::map<std::string, at::Tensor>(ck.optimizer.begin(), ck.optimizer.end()),
                              dir + "/optimizer.safetensors", release);
      return;
    }
    // A sharded run's state, reassembled (one tensor at a time) into the whole tensors.
    std::map<std::string, at::Tensor> whole;
    whole["step"] = step_tensor(ck, dir);
    for (const auto& [name, p] : named_) {
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        whole[name + suffix] = whole_optimizer_tensor(ck, name + suffix, p.numel(), dir).view(p.sizes());
      }
    }
    opt_.load_state_tensors(whole, dir + " (optimizer shards)");
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

// ---- dist.shard optimizer | gradients -----------------------------------------------------------

class Sharded final : public DataParallel {
 public:
  Sharded(DistContext& dist, torch::nn::Module& model, const std::vector<std::pair<std::string, at::Tensor>>& named,
          const DistConfig& cfg, const AdamWOptions& adamw)
      : dist_(dist),
        mode_(cfg.shard),
        bucket_bytes_(static_cast<int64_t>(cfg.bucket_mb * 1024 * 1024)),
        sync_(dist, model, bucket_bytes_, cfg.overlap,
              cfg.shard == ShardMode::kOptimizer ? Collective::kAllReduce : Collective::kReduceScatter),
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
    layout_ = make_shard_layout(named_, world_, bucket_bytes_);
    std::vector<std::pair<std::string, at::Tensor>> masters;
    std::vector<bool> decay;
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      const auto& lb = layout_.buckets[b];
      const auto opts = named_[lb.params.front()].second.options().requires_grad(false);
      master_.push_back(at::zeros({lb.chunk}, opts));
      grad_.push_back(mode_ == ShardMode::kGradients ? sync_.shard_grads()[b] : at::zeros({lb.chunk}, opts));
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
  }

  void broadcast_parameters() override {
    sync_.broadcast_parameters();
    // Every rank now holds rank 0's parameters: its masters are its chunks of them.
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < layout_.params.size(); ++k) {
      master_view_[k].copy_(take_chunk(named_[k].second.detach(), layout_.params[k], rank_));
    }
  }
  void broadcast_buffers() override { sync_.broadcast_buffers(); }
  void begin_step() override { sync_.prepare(); }
  void begin_micro(bool last) override { sync_.set_sync(last); }
  void end_micro(bool last) override {
    if (!last) sync_.end_micro_step();
  }
  void finish_backward() override {
    sync_.finish();
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
    // The updated masters to every rank, bucket by bucket, two on the wire at a time.
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

  std::vector<std::pair<std::string, at::Tensor>> optimizer_state() const override { return opt_->state_tensors(); }

  void load_optimizer_state(const checkpoints::CheckpointData& ck, const std::string& dir) override {
    check_finite_state(ck, dir);
    std::map<std::string, at::Tensor> mine;
    mine["step"] = step_tensor(ck, dir);
    for (size_t k = 0; k < layout_.params.size(); ++k) {
      const auto& lp = layout_.params[k];
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        mine[lp.name + suffix] = take_chunk(whole_optimizer_tensor(ck, lp.name + suffix, lp.numel, dir), lp, rank_);
      }
    }
    opt_->load_state_tensors(mine, dir + (ck.optimizer_shards.empty() ? "/optimizer.safetensors" : " (optimizer shards)"));
  }

  std::string describe() const override {
    return fmt::format(
        "sharded data parallel (dist.shard {}, ZeRO-{}): {} ranks, each updating {} of {} parameter elements (padding "
        "{}), {} buckets; gradients {}, updated parameters all-gathered",
        core::name_of(kShardModeNames, mode_), mode_ == ShardMode::kOptimizer ? 1 : 2, world_, layout_.shard_numel,
        layout_.numel, layout_.padding(), layout_.buckets.size(),
        mode_ == ShardMode::kOptimizer ? "all-reduced" : "reduce-scattered during the backward pass");
  }
  double wait_seconds() const override { return sync_.wait_seconds(); }
  int64_t synced_steps() const override { return sync_.synced_steps(); }

 private:
  DistContext& dist_;
  ShardMode mode_;
  int64_t bucket_bytes_;
  GradSync sync_;
  std::vector<std::pair<std::string, at::Tensor>> named_;
  int world_ = 1, rank_ = 0;
  ShardLayout layout_;
  std::vector<at::Tensor> master_, grad_;            // per bucket: this rank's row, [chunk]
  std::vector<at::Tensor> master_view_, grad_view_;  // per parameter: views of them
  std::unique_ptr<AdamW> opt_;
};

}  // namespace

at::Tensor whole_optimizer_tensor(const checkpoints::CheckpointData& ck, const std::string& key, int64_t numel,
                                  const std::string& dir) {
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
  const int64_t chunk = shard_chunk(numel, w);
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
      return std::make_unique<Sharded>(dist, model, named, cfg, adamw);
    case ShardMode::kParameters:
      break;
  }
  throw core::UserError("dist.shard parameters is not available in this build");
}

}  // namespace bitqat::training
