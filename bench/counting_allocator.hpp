// A CPU allocator that counts live bytes and their peak, installed in front of LibTorch's own
// (c10::SetCPUAllocator) by the benchmarks that report memory (dit_footprint, checkpoint_memory).
#pragma once
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace bitqat::bench {

// Counts live bytes and their peak; every allocation still comes from LibTorch's own allocator. The
// returned DataPtr's context is its data pointer (some LibTorch kernels, oneDNN's among them, require
// that), so the inner allocations are kept in a table keyed by that pointer.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    auto inner = base_->allocate(n);
    void* data = inner.get();
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_ += static_cast<int64_t>(n);
      if (data != nullptr) blocks_.emplace(data, Block{std::move(inner), n});
      if (live_ > peak_) {
        peak_ = live_;
        if (track_sizes_) peak_sizes_ = sizes_locked();
      }
    }
    return {data, data, &CountingAllocator::release, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { base_->copy_data(dest, src, count); }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }  // raw_allocate / raw_deallocate
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = live_;
    if (track_sizes_) peak_sizes_ = sizes_locked();
  }
  // With tracking on, the blocks live at the peak: bytes -> how many (what the peak is made of). Each
  // new peak walks the live blocks, so only for programs with few allocations per step.
  void track_peak_sizes(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    track_sizes_ = on;
    peak_sizes_ = sizes_locked();
  }
  std::map<size_t, int64_t> peak_sizes() {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_sizes_;
  }
  int64_t live() {
    std::lock_guard<std::mutex> lock(mu_);
    return live_;
  }
  int64_t peak() {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  static CountingAllocator* instance;  // the installed one (the deleter is a plain function)

 private:
  struct Block {
    c10::DataPtr inner;
    size_t n;
  };
  static void release(void* p) {
    if (p == nullptr) return;
    c10::DataPtr inner;  // freed outside the lock, through LibTorch's deleter
    {
      std::lock_guard<std::mutex> lock(instance->mu_);
      auto it = instance->blocks_.find(p);
      if (it == instance->blocks_.end()) return;
      instance->live_ -= static_cast<int64_t>(it->second.n);
      inner = std::move(it->second.inner);
      instance->blocks_.erase(it);
    }
  }
  std::map<size_t, int64_t> sizes_locked() const {
    std::map<size_t, int64_t> m;
    for (const auto& [p, b] : blocks_) ++m[b.n];
    return m;
  }
  c10::Allocator* base_;
  std::mutex mu_;
  bool track_sizes_ = false;
  std::map<size_t, int64_t> peak_sizes_;
  std::unordered_map<void*, Block> blocks_;
  int64_t live_ = 0, peak_ = 0;
};
inline CountingAllocator* CountingAllocator::instance = nullptr;

}  // namespace bitqat::bench
