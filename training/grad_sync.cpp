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

GradSync::GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap)
    : dist_(dist), overlap_(overlap) {
  for (const auto& item : model.named_parameters(true)) {
    if (!item.value().requires_grad()) continue;
    names_.push_back(item.key());
    params_.push_back(item.value());
  }
  for (const auto& b : model.buffers(true)) {
    if (b.defined() && b.numel() > 0) buffers_.push_back(b);
  }
  if (!dist_.active()) return;
  if (bucket_bytes < 1)
    throw core::UserError(fmt::format("gradient bucket size {} bytes is not positive", bucket_bytes));

  bucket_of_.assign(params_.size(), 0);
  ready_.assign(params_.size(), 0);
  for (auto& idx : plan_buckets(params_, bucket_bytes)) {
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
    info.bytes = b.numel * static_cast<int64_t>(b.flat.element_size());
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
  sync_ = sync;
}

void GradSync::prepare() {
  if (!hooked_) return;
  broadcast_buffers();
  std::lock_guard<std::mutex> lock(mu_);
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& b : buckets_) b.pending = static_cast<int>(b.params.size());
  next_launch_ = 0;
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

void GradSync::finish() {
  if (!hooked_) return;
  std::unique_lock<std::mutex> lock(mu_);
  if (!sync_) return;
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

}  // namespace bitqat::training
