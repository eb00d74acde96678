// The memory one rank of a run needs, term by term, from the config alone (`bitqat plan`): the model
// is built on the meta device (models/factory.hpp make_meta_model), so an 8B config is planned without
// allocating its weights. The trainer refuses at set-up a config whose plan exceeds the device.
//
// Terms per rank (fp32 parameters, gradients and AdamW state; N trainable elements, S = the shard of
// training/shard_layout.hpp, W ranks; with W = 1 there are no all-reduce buckets, while the sharded
// modes keep their reduce-scatter and all-gather buffers, which are then copies; a launched run of one
// rank has a process group, and with it the 4N all-reduce buckets of none and optimizer, which the plan
// of W = 1 leaves out):
//   dist.shard       parameters              gradients                optimizer state
//   none             4N                      4N                       8N  (exp_avg, exp_avg_sq)
//   optimizer        4N                      4N + 4S (the shard)      12S (8S moments + 4S master shard)
//   gradients        4N                      4S + 2 reduce-scatter    12S
//   parameters       4S + gathered working   4S + whole gradients     8S  (the 4S shard is the master)
//                    set (outside the blocks, awaiting their
//                    the running block and   reduce-scatter (outside
//                    the next: float32 while the blocks, one block)
//                    lambda_w < 1, else its  + 2 reduce-scatter
//                    norms, the rest waiting
//                    as 2-bit codes)
// dist.shard parameters buckets a block at a time, and the rest (shard_layout.hpp block_buckets); the
// other modes by dist.bucket_mb. A reduce-scatter or all-gather wire buffer is 4 * W * bucket.chunk bytes;
// a reduce-scatter in flight also holds its output, 4 * bucket.chunk, and on the CPU path (Gloo) a copy
// of its input.
// dist.shard parameters recomputes every block whatever train.activation_checkpointing says (a block's
// weights are released after its forward, so its graph may not keep them).
// communication buffers: the all-reduce buckets, 4N, with none and optimizer (W > 1); with parameters
// the all-gather wire buffers of the two blocks in flight that are not parameters themselves: their
// ternary weights' 2-bit codes at lambda_w 1, W chunk / 4 bytes (a float32 tensor is gathered into the
// buffer that becomes its parameter, counted under parameters).
// largest transient: the biggest of the fused head + loss's chunk buffers (models/head_loss.hpp:
// C = min(head_loss_chunk(vocab), B * T) tokens at a time, 2 x 4 * C * vocab, 4 x with a distillation
// teacher), one block's activations (and, on the CPU, its int8 weight
// codes) while it is recomputed (activation checkpointing), and the all-gather of updated parameters
// (optimizer and gradients: two buckets' wire buffers at a time).
// saved activations: memory_plan.cpp counts what BitLM's blocks save for the backward pass, and the
// fused head's gradients (the head weight's, 4 V d, moves into the gradients term at the head's
// backward: counted in both, the plan is conservative by it).
// quantized weight copies: what the forward keeps per quantized weight besides the fp32 latent one
// (the GPU kernels' packed and bf16 copies; the CPU's int8 codes, saved for the backward by the blocks
// that are not recomputed).
// distillation teacher: its fp32 parameters on every rank.
// Apart from the total: the set-up peak (every rank builds the whole model, and the state the mode
// keeps, the master shard included, before a sharded mode releases the model; checked against the
// limit too) and, with parameters, rank 0's host memory at a checkpoint (the whole fp32 model,
// collected a block at a time).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/recompute.hpp"
#include "training/config.hpp"

namespace bitqat::training {

struct MemoryTerm {
  std::string name;     // "parameters", "gradients", ...
  int64_t bytes = 0;
  std::string formula;  // how the bytes were counted, with the numbers
};

struct MemoryPlan {
  ShardMode mode = ShardMode::kNone;
  int world = 1;
  bool cuda = false;          // the forward's path: the GPU kernels (else the CPU's)
  int activation_bytes = 4;   // bytes of a block's float activation (2 under bf16 autocast)
  models::Checkpointing checkpointing;  // what the run does: train.activation_checkpointing, full with
                                        // dist.shard parameters
  bool checkpointing_forced = false;    // dist.shard parameters overrode the key
  int64_t batch = 0, seq_len = 0;
  int64_t trainable = 0;    // N: elements of the parameters with requires_grad
  int64_t frozen = 0;       // elements of the other parameters (replicated, fp32)
  int64_t shard_numel = 0;  // S: elements of one rank's shard, padding included
  int64_t padding = 0;      // W * S - N
  size_t buckets = 0;       // of the shard layout (dist.bucket_mb)
  bool activations_estimated = true;  // false: the model kind's saved activations are not counted
  std::vector<MemoryTerm> terms;      // in the order printed
  MemoryTerm setup_peak;              // not in the total; checked against the limit too
  std::vector<MemoryTerm> host;       // host memory, not the device's (rank 0's at a checkpoint)
  int64_t total() const;
  const MemoryTerm& biggest() const;
};

// The plan of `cfg` on `world` ranks. The forward's path is device.type's (auto: the GPU when one is
// visible); the activations are those of the fully quantized forward (lambda 1). Reads no data file
// and no weights (a distillation teacher's config.json or GGUF header at most).
MemoryPlan memory_plan(const Config& cfg, int world);

// Header line and one line per term: name, GiB with two decimals, bytes, formula; then the total, the
// set-up peak and the host lines.
std::string format_memory_plan(const MemoryPlan& plan);

struct MemoryLimit {
  int64_t bytes = 0;   // 0: unknown
  std::string source;  // "configs/x.yaml:40: device.memory_gb = 80", "GPU 0 (NVIDIA H100 80GB HBM3)", "..."
};
// device.memory_gb when set, else the memory of `device` (a GPU's, or the machine's RAM for the CPU).
MemoryLimit memory_limit(const Config& cfg, const at::Device& device);
// The device a plan is checked against: device.type's (auto: GPU 0 when one is visible, else the CPU).
at::Device plan_device(const Config& cfg);

// Throws core::ConfigError when plan.total() exceeds a known limit (the total, the limit and where it
// came from, the biggest term, and what to change), or plan.setup_peak does (naming it).
void check_memory_plan(const MemoryPlan& plan, const MemoryLimit& limit);

}  // namespace bitqat::training
