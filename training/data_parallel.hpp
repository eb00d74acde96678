// Data parallelism, one interface for every way of splitting the work (docs/distributed.md):
//   dist.shard none        replicated (PyTorch DDP's way: training/grad_sync.hpp): every rank holds the
//                          parameters, the averaged gradients and the whole AdamW state;
//   dist.shard optimizer   ZeRO-1: gradients all-reduced as for none, but each rank keeps the AdamW moments
//                          and the fp32 master of its own shard of every parameter
//                          (training/shard_layout.hpp), updates that shard only, then all-gathers the
//                          updated parameters;
//   dist.shard gradients   ZeRO-2: gradients reduce-scattered bucket by bucket during the backward pass,
//                          each rank keeping only its gradient shard; the update as for optimizer;
//   dist.shard parameters  ZeRO-3: also the weights: a rank keeps the fp32 master of its shard only; a
//                          transformer block's weights are all-gathered (fp32) before its forward and
//                          again before its recomputed backward (the block is run through the recompute
//                          wrapper), prefetching the next block's, and released after each; the rest of
//                          the model (embeddings, final norm, head) is gathered for the whole step.
//                          One bucket per block: its gradients are reduce-scattered together.
// (ZeRO: Rajbhandari et al. 2020; llm.c's zero.cuh and torchtitan's distributed/ keep theirs in one place
// too.) A new mode is one more implementation of DataParallel, chosen in make_data_parallel.
//
// The trainer's step, for every mode:
//   begin_step(); for each micro-step { begin_micro(last); backward; end_micro(last); }
//   finish_backward(); grads() -> norm (sum_over_ranks when sharded), clipping, finiteness;
//   step(lr, wd, skipped).
// Without a process group the replicated mode does nothing beyond the optimizer; the sharded modes
// run with a world of 1.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "training/config.hpp"
#include "training/distributed.hpp"
#include "training/optimizer.hpp"

namespace bitqat::training {

// Where a transformer block's pass is (the recompute wrapper of models/ reports them).
enum class BlockEvent { kBeforeForward, kAfterForward, kBeforeBackward, kAfterBackward };

class DataParallel {
 public:
  virtual ~DataParallel() = default;

  // Set-up: parameters and buffers <- rank 0's (the sharded modes then take their shards of them).
  virtual void broadcast_parameters() = 0;
  // Buffers <- rank 0's (batch-norm statistics; DDP does it before every forward pass).
  virtual void broadcast_buffers() = 0;

  virtual void begin_step() = 0;
  // Around each micro-step's backward pass; `last` is the step's last micro-step.
  virtual void begin_micro(bool last) = 0;
  virtual void end_micro(bool last) = 0;
  // After the last micro-step: the averaged gradients (or this rank's shards of them) are in grads().
  virtual void finish_backward() = 0;
  // What this rank updates from: the averaged gradients, or its shards of them (padding included,
  // which is zero). Clipping scales them in place.
  virtual std::vector<at::Tensor> grads() = 0;
  // True when grads() is a shard: a norm over it is this rank's part of the global one.
  virtual bool sharded() const = 0;
  // t <- sum over ranks (the identity when grads() is not sharded).
  virtual void sum_over_ranks(at::Tensor& t) = 0;
  // The AdamW update of what this rank owns, then (sharded) the all-gather of the updated parameters.
  // `skipped`: float32 scalar on the device, 1 leaves everything as it was (AdamW::step).
  virtual void step(double lr, double weight_decay, const at::Tensor& skipped) = 0;
  virtual void zero_grad() = 0;

  // False for dist.shard parameters: a forward then needs every rank (evaluation runs on all of them).
  virtual bool whole_on_every_rank() const { return true; }
  // Around an evaluation's forward passes (every rank calls them when whole_on_every_rank() is false):
  // sharded parameters gather the exact float32 weights block by block, and release them after.
  virtual void begin_eval() {}
  virtual void end_eval() {}
  // dist.shard parameters: every trainable parameter whole, on the main rank's host (gathered one block
  // at a time; every rank must call it); empty for the other modes and on the other ranks.
  virtual std::map<std::string, at::Tensor> whole_parameters_on_main() { return {}; }
  // dist.shard parameters: block `block`'s weights gathered before its forward and its recomputed
  // backward (and the neighbour's prefetched), released after each.
  virtual void on_block(BlockEvent /*event*/, size_t /*block*/) {}

  // Checkpoints. Unsharded: the whole state (optimizer.safetensors, written by rank 0). Sharded:
  // this rank's shard (its optimizer-rankR-of-W.safetensors), tensors named as the whole state's.
  virtual std::vector<std::pair<std::string, at::Tensor>> optimizer_state() const = 0;
  // From a checkpoint written by any mode and any world size (sharded state is reassembled and cut
  // into this run's shards). UserError naming the file for a missing or mis-shaped tensor.
  virtual void load_optimizer_state(const checkpoints::CheckpointData& ck, const std::string& dir) = 0;

  // For the log: the mode and its buckets; seconds spent waiting for collectives the backward pass did
  // not hide, and the synchronised steps.
  virtual std::string describe() const = 0;
  virtual double wait_seconds() const = 0;
  virtual int64_t synced_steps() const = 0;
};

// `named`: the trainable parameters of `model`, in registration order.
std::unique_ptr<DataParallel> make_data_parallel(DistContext& dist, torch::nn::Module& model,
                                                 const std::vector<std::pair<std::string, at::Tensor>>& named,
                                                 const DistConfig& cfg, const AdamWOptions& adamw);

// The whole flat state tensor `key` ([numel] of the parameter's `shape`) from a checkpoint of any
// mode: optimizer.safetensors' tensor flattened, or the ranks' shards concatenated with their padding
// dropped. UserError naming the file when it is missing or its size does not fit the shape.
at::Tensor whole_optimizer_tensor(const checkpoints::CheckpointData& ck, const std::string& key,
                                  const std::vector<int64_t>& shape, const std::string& dir);

}  // namespace bitqat::training
