// Data-parallel gradient averaging, PyTorch DDP's way: parameters and buffers broadcast from rank 0,
// then per step a bucketed sum all-reduce (buckets in reverse registration order, which is roughly
// the order in which backward produces the gradients) started from a post-accumulate-grad hook as
// soon as a bucket's last gradient lands, so communication overlaps the rest of the backward pass.
// Without a process group it does nothing.
//
// With Collective::kReduceScatter (sharded data parallelism, ZeRO-2) the buckets follow a
// ShardLayout instead: each bucket is reduce-scattered, every micro-step, as soon as its gradients
// have landed, its parameters' .grad are released at once, and this rank keeps only its shard of the
// summed gradients (shard_grads()). At most two buckets are on the wire at a time, which bounds the
// transient memory to two bucket wire buffers.
#pragma once
#include <torch/nn/module.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "training/distributed.hpp"
#include "training/shard_layout.hpp"

namespace bitqat::training {

struct GradBucketInfo {
  std::vector<std::string> names;  // parameters in the bucket, in bucket order
  int64_t bytes = 0;
};

// Bucket layout: parameters in reverse order, a new bucket when adding one would pass the cap or
// change the dtype. The first bucket is capped at min(1 MiB, bucket_bytes) so that communication
// starts early; the rest at bucket_bytes. A parameter larger than the cap gets a bucket of its own.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes);

enum class Collective { kAllReduce, kReduceScatter };

class GradSync {
 public:
  // Registers a hook on every trainable parameter of `model` (only when `dist` has a process group;
  // always with kReduceScatter, whose shards exist for one rank too).
  // overlap = false starts all buckets after the backward pass instead (for measuring the overlap).
  // kReduceScatter takes `layout` when given (its parameters those of `model`, in order), else makes
  // one with buckets of bucket_bytes.
  GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap,
           Collective collective = Collective::kAllReduce, const ShardLayout* layout = nullptr);
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
  // kReduceScatter: after each micro-step's backward (finish() does it for the last): its buckets
  // reduce-scattered and added to the shards.
  void end_micro_step();

  // kReduceScatter: the layout, and this rank's gradient shard of each bucket ([bucket.chunk], the sum
  // over micro-steps and ranks divided by the world size once finish() returned).
  const ShardLayout& layout() const { return layout_; }
  std::vector<at::Tensor>& shard_grads() { return shard_grads_; }

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
    at::Tensor out;  // kReduceScatter: this rank's summed part, while on the wire
  };
  void launch_locked(size_t b);
  void drain_launched_locked();
  void settle_scatter_locked(size_t b);  // waits for bucket b's reduce-scatter, adds it to its shard
  void end_micro_locked();
  void check_ready_locked();  // throws (after draining) when a hook failed or a gradient never landed

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
  Collective collective_ = Collective::kAllReduce;
  ShardLayout layout_;
  std::vector<at::Tensor> shard_grads_;
  size_t settled_ = 0;  // kReduceScatter: buckets of this micro-step already added to the shards
  bool first_micro_ = true;
  std::string hook_error_;
  double wait_s_ = 0.0;
  int64_t synced_steps_ = 0;
  std::mutex mu_;
};

}  // namespace bitqat::training
