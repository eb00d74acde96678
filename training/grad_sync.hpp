// Data-parallel gradient averaging, PyTorch DDP's way: parameters and buffers broadcast from rank 0,
// then per step a bucketed sum all-reduce (buckets in reverse registration order, which is roughly
// the order in which backward produces the gradients) started from a post-accumulate-grad hook as
// soon as a bucket's last gradient lands, so communication overlaps the rest of the backward pass.
// Without a process group it does nothing.
#pragma once
#include <torch/nn/module.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "training/distributed.hpp"

namespace bitqat::training {

struct GradBucketInfo {
  std::vector<std::string> names;  // parameters in the bucket, in bucket order
  int64_t bytes = 0;
};

// Bucket layout: parameters in reverse order, a new bucket when adding one would pass the cap or
// change the dtype. The first bucket is capped at min(1 MiB, bucket_bytes) so that communication
// starts early; the rest at bucket_bytes. A parameter larger than the cap gets a bucket of its own.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes);

class GradSync {
 public:
  // Registers a hook on every trainable parameter of `model` (only when `dist` has a process group).
  // overlap = false starts all buckets after the backward pass instead (for measuring the overlap).
  GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Parameters and buffers <- rank 0's.
  void broadcast_parameters();
  // Buffers <- rank 0's (as DDP does before every forward pass): running statistics such as batch
  // norm's are updated from each rank's own share and would drift apart. One broadcast per dtype.
  void broadcast_buffers();
  // Whether the coming backward pass is the step's last micro-step (the one that all-reduces).
  void set_sync(bool sync);
  // Start of a step: also broadcasts the buffers.
  void prepare();
  // After the last micro-step's backward: waits for every bucket, divides by the world size and
  // writes the averages back into .grad. A trainable parameter whose gradient never landed is a
  // UserError naming it (all ranks meet the same collectives, so this never hangs a peer for longer
  // than its failure takes to be seen).
  void finish();

  std::vector<GradBucketInfo> buckets() const;
  // Seconds finish() has spent waiting for all-reduces (the communication that the backward pass
  // did not hide), summed since construction, and the number of synchronised steps.
  double wait_seconds() const { return wait_s_; }
  // Buckets whose all-reduce has started in the current step (with overlap, all of them by the end
  // of the synchronising backward pass; without, none until finish()).
  size_t launched_buckets() const { return next_launch_; }
  int64_t synced_steps() const { return synced_steps_; }

  // Called from the autograd hook of parameter `index` (public for the hook object only).
  void on_grad_ready(size_t index);

 private:
  struct Bucket {
    std::vector<size_t> params;
    std::vector<int64_t> offsets;
    int64_t numel = 0;
    at::Tensor flat;
    int pending = 0;
    PendingOp op;
  };
  void launch_locked(size_t b);
  void drain_launched_locked();

  DistContext& dist_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> buffers_;
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  std::vector<char> ready_;
  size_t next_launch_ = 0;
  bool overlap_ = true;
  bool sync_ = true;
  bool hooked_ = false;
  std::string hook_error_;
  double wait_s_ = 0.0;
  int64_t synced_steps_ = 0;
  std::mutex mu_;
};

}  // namespace bitqat::training
