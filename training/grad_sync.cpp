#include "training/grad_sync.hpp"

#include <fmt/format.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>

#include "core/error.hpp"

namespace bitqat::training {
namespace {

// Runs after AccumulateGrad has written the parameter's .grad (on the autograd engine's thread).
class ReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  ReadyHook(GradSync* sync, size_t index) : sync_(sync), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { sync_->on_grad_ready(index_); }

 private:
  GradSync* sync_;
  size_t index_;
};

constexpr int64_t kFirstBucketCap = int64_t{1} << 20;

}  // namespace

std::vector<std::vector<size_t>> plan_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes) {
  std::vector<std::vector<size_t>> out;
  int64_t bytes = 0;
  at::ScalarType dtype = at::ScalarType::Undefined;
  for (size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k];
    const int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
    const int64_t cap = out.size() == 1 ? std::min(bucket_bytes, kFirstBucketCap) : bucket_bytes;
    const bool fits = !out.empty() && p.scalar_type() == dtype && bytes + b <= cap;
    if (!fits) {
      out.emplace_back();
      bytes = 0;
      dtype = p.scalar_type();
    }
    out.back().push_back(k);
    bytes += b;
  }
  return out;
}

GradSync::GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap,
                   Collective collective, const ShardLayout* layout)
    : dist_(dist), overlap_(overlap), collective_(collective) {
  for (const auto& item : model.named_parameters(true)) {
    if (!item.value().requires_grad()) continue;
    names_.push_back(item.key());
    params_.push_back(item.value());
  }
  for (const auto& b : model.buffers(true)) {
    if (b.defined() && b.numel() > 0) buffers_.push_back(b);
  }
  if (!dist_.active() && collective_ == Collective::kAllReduce) return;
  if (bucket_bytes < 1)
    throw core::UserError(fmt::format("gradient bucket size {} bytes is not positive", bucket_bytes));

  bucket_of_.assign(params_.size(), 0);
  ready_.assign(params_.size(), 0);
  if (collective_ == Collective::kReduceScatter) {
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (size_t k = 0; k < params_.size(); ++k) {
      if (params_[k].scalar_type() != at::kFloat) {
        throw core::UserError(fmt::format(
            "dist.shard: parameter {} is {}; sharded data parallelism keeps float32 parameters (train in fp32 or "
            "with bf16 autocast, whose parameters stay float32)",
            names_[k], c10::toString(params_[k].scalar_type())));
      }
      named.emplace_back(names_[k], params_[k]);
    }
    layout_ = layout ? *layout : make_shard_layout(named, dist_.active() ? dist_.world() : 1, bucket_bytes);
    if (layout_.params.size() != named.size()) {
      throw std::logic_error("GradSync: the shard layout is not of this model's trainable parameters");
    }
    for (const auto& lb : layout_.buckets) {
      Bucket bk;
      for (const size_t k : lb.params) {
        bucket_of_[k] = buckets_.size();
        bk.params.push_back(k);
        bk.offsets.push_back(layout_.params[k].offset);
      }
      bk.numel = lb.chunk;
      shard_grads_.push_back(at::zeros({lb.chunk}, params_[lb.params.front()].options().requires_grad(false)));
      buckets_.push_back(std::move(bk));
    }
  }
  for (auto& idx : collective_ == Collective::kReduceScatter ? std::vector<std::vector<size_t>>{}
                                                             : plan_buckets(params_, bucket_bytes)) {
    Bucket bk;
    bk.params = std::move(idx);
    for (size_t k : bk.params) {
      bucket_of_[k] = buckets_.size();
      bk.offsets.push_back(bk.numel);
      bk.numel += params_[k].numel();
    }
    const auto& p0 = params_[bk.params.front()];
    bk.flat = at::zeros({bk.numel}, p0.options().requires_grad(false));
    buckets_.push_back(std::move(bk));
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    auto& slot = torch::autograd::impl::post_acc_grad_hooks(params_[k]);
    if (slot) {
      throw std::logic_error(fmt::format("GradSync: parameter {} already has a post-accumulate-grad hook", names_[k]));
    }
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::make_unique<ReadyHook>(this, k));
  }
  hooked_ = true;
}

GradSync::~GradSync() {
  if (!hooked_) return;
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

std::vector<GradBucketInfo> GradSync::buckets() const {
  std::vector<GradBucketInfo> out;
  for (const auto& b : buckets_) {
    GradBucketInfo info;
    for (size_t k : b.params) info.names.push_back(names_[k]);
    // On the wire: the bucket (all-reduce), or all ranks' rows of it (reduce-scatter).
    info.bytes = collective_ == Collective::kReduceScatter
                     ? b.numel * layout_.world * static_cast<int64_t>(sizeof(float))
                     : b.numel * static_cast<int64_t>(b.flat.element_size());
    out.push_back(std::move(info));
  }
  return out;
}

void GradSync::broadcast_parameters() {
  if (!dist_.active()) return;
  at::NoGradGuard no_grad;
  for (size_t k = 0; k < params_.size(); ++k) {
    dist_.broadcast_(params_[k], "broadcast of parameter " + names_[k]);
  }
  broadcast_buffers();
}

void GradSync::broadcast_buffers() {
  if (!dist_.active() || buffers_.empty()) return;
  at::NoGradGuard no_grad;
  std::vector<at::ScalarType> dtypes;
  for (const auto& b : buffers_) {
    if (std::find(dtypes.begin(), dtypes.end(), b.scalar_type()) == dtypes.end()) dtypes.push_back(b.scalar_type());
  }
  for (const auto dt : dtypes) {
    std::vector<at::Tensor> group;
    for (const auto& b : buffers_) {
      if (b.scalar_type() == dt) group.push_back(b.detach().reshape({-1}));
    }
    at::Tensor flat = at::cat(group);
    dist_.broadcast_(flat, fmt::format("broadcast of {} {} buffers", group.size(), c10::toString(dt)));
    int64_t off = 0;
    for (auto& b : buffers_) {
      if (b.scalar_type() != dt) continue;
      b.detach().copy_(flat.narrow(0, off, b.numel()).view(b.sizes()));
      off += b.numel();
    }
  }
}

void GradSync::set_sync(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  // Reduce-scatter runs every micro-step: a rank keeps no full gradients between them.
  sync_ = collective_ == Collective::kReduceScatter || sync;
}

void GradSync::prepare() {
  if (!hooked_) return;
  broadcast_buffers();
  std::lock_guard<std::mutex> lock(mu_);
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& b : buckets_) b.pending = static_cast<int>(b.params.size());
  next_launch_ = 0;
  settled_ = 0;
  first_micro_ = true;
  hook_error_.clear();
}

void GradSync::on_grad_ready(size_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sync_) return;  // an accumulation micro-step: gradients stay local
  if (ready_[index]) {
    // A second backward pass in the synchronised micro-step: its bucket may already be on the wire.
    hook_error_ =
        fmt::format("the gradient of {} was accumulated twice in the micro-step that synchronises", names_[index]);
    return;
  }
  ready_[index] = 1;
  auto& b = buckets_[bucket_of_[index]];
  if (--b.pending > 0 || !overlap_) return;
  // Strictly in bucket order, as every rank must issue the collectives in the same order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) launch_locked(next_launch_++);
}

void GradSync::launch_locked(size_t bi) {
  auto& b = buckets_[bi];
  at::NoGradGuard no_grad;
  if (collective_ == Collective::kReduceScatter) {
    if (bi >= settled_ + 2) settle_scatter_locked(settled_++);  // at most two buckets on the wire
    const int64_t world = layout_.world;
    const auto& p0 = params_[b.params.front()];
    b.flat = at::zeros({world * b.numel}, p0.options().requires_grad(false));
    auto rows = b.flat.view({world, b.numel});
    for (size_t j = 0; j < b.params.size(); ++j) {
      auto& p = params_[b.params[j]];
      const auto& lp = layout_.params[b.params[j]];
      if (p.grad().defined()) {
        at::Tensor padded = at::zeros({world * lp.chunk}, b.flat.options());
        padded.narrow(0, 0, lp.numel).copy_(p.grad().reshape({-1}));
        rows.narrow(1, b.offsets[j], lp.chunk).copy_(padded.view({world, lp.chunk}));
      }
      p.mutable_grad() = at::Tensor();  // released: this rank keeps its shard only
    }
    b.out = at::empty({b.numel}, b.flat.options());
    b.op = dist_.reduce_scatter_sum_async(
        b.out, b.flat,
        fmt::format("reduce-scatter of gradient bucket {} of {} ({} tensors, {:.2f} MiB)", bi, buckets_.size(),
                    b.params.size(), static_cast<double>(b.flat.numel() * b.flat.element_size()) / (1 << 20)));
    return;
  }
  for (size_t j = 0; j < b.params.size(); ++j) {
    const auto& p = params_[b.params[j]];
    auto dst = b.flat.narrow(0, b.offsets[j], p.numel());
    const auto& g = p.grad();
    if (g.defined()) {
      dst.copy_(g.reshape({-1}));
    } else {
      dst.zero_();
    }
  }
  b.op = dist_.all_reduce_sum_async(
      b.flat, fmt::format("all-reduce of gradient bucket {} of {} ({} tensors, {:.2f} MiB)", bi, buckets_.size(),
                          b.params.size(), static_cast<double>(b.numel * b.flat.element_size()) / (1 << 20)));
}

void GradSync::drain_launched_locked() {
  // The error is this rank's own finding (every rank meets it in the same step), not a failed
  // collective: the group is healthy. Finish the all-reduces already on the wire, so that no Gloo or
  // NCCL work is left in flight when the error unwinds and the group is shut down; a process that
  // leaves work in flight and then exits normally can die in teardown (std::system_error from a
  // worker thread touching destroyed state). A collective that fails here marks the group failed.
  for (size_t i = 0; i < next_launch_ && i < buckets_.size(); ++i) {
    try {
      buckets_[i].op.wait();
    } catch (const core::UserError&) {
      // wait() already marked the group failed; the caller's error is the one to report.
    }
  }
}

void GradSync::settle_scatter_locked(size_t bi) {
  auto& b = buckets_[bi];
  const auto t0 = std::chrono::steady_clock::now();
  b.op.wait();
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  at::NoGradGuard no_grad;
  if (first_micro_) {
    shard_grads_[bi].copy_(b.out);
  } else {
    shard_grads_[bi].add_(b.out);
  }
  b.flat = at::Tensor();
  b.out = at::Tensor();
}

void GradSync::end_micro_step() {
  if (!hooked_ || collective_ != Collective::kReduceScatter) return;
  std::unique_lock<std::mutex> lock(mu_);
  end_micro_locked();
}

void GradSync::end_micro_locked() {
  check_ready_locked();
  while (next_launch_ < buckets_.size()) launch_locked(next_launch_++);  // overlap = false
  while (settled_ < buckets_.size()) settle_scatter_locked(settled_++);
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& b : buckets_) b.pending = static_cast<int>(b.params.size());
  next_launch_ = 0;
  settled_ = 0;
  first_micro_ = false;
}

void GradSync::finish() {
  if (!hooked_) return;
  std::unique_lock<std::mutex> lock(mu_);
  if (!sync_) return;
  if (collective_ == Collective::kReduceScatter) {
    if (std::find(ready_.begin(), ready_.end(), 1) != ready_.end() || first_micro_) end_micro_locked();
    ++synced_steps_;
    at::NoGradGuard no_grad;
    for (auto& g : shard_grads_) g.mul_(1.0 / layout_.world);
    return;
  }
  check_ready_locked();
  while (next_launch_ < buckets_.size()) launch_locked(next_launch_++);  // overlap = false
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : buckets_) b.op.wait();
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++synced_steps_;
  at::NoGradGuard no_grad;
  const double inv = 1.0 / dist_.world();
  for (auto& b : buckets_) {
    b.flat.mul_(inv);
    for (size_t j = 0; j < b.params.size(); ++j) {
      auto& p = params_[b.params[j]];
      auto src = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(src);
      } else {
        p.mutable_grad() = src.clone();
      }
    }
  }
}

void GradSync::check_ready_locked() {
  if (!hook_error_.empty()) {
    drain_launched_locked();
    throw core::UserError(fmt::format("rank {}: {}", dist_.rank(), hook_error_));
  }
  std::vector<std::string> missing;
  for (size_t k = 0; k < params_.size(); ++k) {
    if (!ready_[k]) missing.push_back(names_[k]);
  }
  if (!missing.empty()) {
    drain_launched_locked();
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 8) list += fmt::format(" and {} more", missing.size() - 8);
    throw core::UserError(fmt::format(
        "rank {}: trainable parameter(s) {} got no gradient in this step's backward pass; data-parallel training "
        "all-reduces every trainable parameter, so each must take part in the loss (or be frozen)",
        dist_.rank(), list));
  }
}

}  // namespace bitqat::training
