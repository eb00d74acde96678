// How a model runs its transformer blocks: activation checkpointing (a block's activations dropped
// after its forward and recomputed in the backward pass, trading compute for memory) and hooks run
// around each block's forward and backward (for a component that must act per block, such as
// gathering sharded weights before the block runs and freeing them after).
//
// BitLM and BitDiT hold a BlockRunner (`block_runner`; models::block_runner in factory.hpp finds it
// behind a torch::nn::Module) and send every block of a training forward through it. The trainer
// sets its policy from train.activation_checkpointing.
//
// A recomputed block is one autograd node. Its forward runs the block under no_grad and saves only the
// block's inputs (the residual stream and what it reads, such as RoPE tables or the DiT's
// conditioning). Its backward runs the block's forward again with grad enabled on detached copies of
// those inputs (under the autocast state of the forward), then a nested backward from the recomputed
// output with the incoming gradient: parameter gradients accumulate through their AccumulateGrad
// nodes as without checkpointing (post-accumulate-grad hooks, such as the data-parallel all-reduce,
// fire once each, as usual), and the inputs' gradients go on to the rest of the graph as they reach
// the block's inputs (summed over their uses in the block, in that sum's layout). The recomputation
// repeats the forward's arithmetic operation for operation (quantized activations included), so
// losses and gradients are bit-identical to running without checkpointing, as long as nothing outside
// the blocks reads a recomputed block's stream input (see BlockRunner::run's recomputable).
//
// Limits: gradients reach parameters only through Tensor::backward / torch::autograd::backward (not
// torch::autograd::grad, which would see none), and no double backward. A block's forward must be a
// pure function of its inputs and parameters: it may not draw random numbers (the LM's and DiT's blocks
// have no dropout or other randomness, so no generator state is saved) nor change module state.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace bitqat::models {

// Which blocks are recomputed: the value of train.activation_checkpointing, `none`, `full` or
// `{every_n: N}` (a core::Schema ConfigValue: it parses and writes itself).
struct Checkpointing {
  int64_t every_n = 0;  // 0: none; 1: every block (full); N: the blocks whose index % N == 0 (0, N, 2N, ...)

  bool none() const { return every_n == 0; }
  bool recomputes(size_t block) const { return every_n > 0 && block % static_cast<size_t>(every_n) == 0; }
  std::string to_string() const;  // "none", "full" or "every_n: N"

  static constexpr const char* kConfigType = "name or mapping";
  static constexpr const char* kConfigAllowed = "none|full|{every_n: N}, N an integer >= 1";
  // `section`'s `key`: none, full, or a mapping whose only key every_n is an integer >= 1 ({every_n: 1}
  // is full). Anything else is a ConfigError naming file:line, the key, the value and what is expected.
  static Checkpointing parse_key(const core::Node& section, const std::string& key);
  YAML::Node to_yaml() const;  // none, full or {every_n: N}
};

// Code run around each block, in the order of the passes: forward 0, 1, ..., n-1, then backward
// n-1, ..., 0. before_forward / after_forward bracket every block's forward run through the runner
// (in training and evaluation). before_backward / after_backward bracket a block's part of the backward
// pass, in training (grad enabled, module in training mode): for a recomputed block, before its
// recomputation and after the nested backward (its parameters' gradients are then accumulated); a block
// that is not recomputed keeps its forward's graph, which the same nested backward runs. The calls
// come on the thread that runs that part of the backward pass (an autograd device thread on a GPU).
// Empty by default: derive and override what is needed.
struct BlockHooks {
  virtual ~BlockHooks() = default;
  virtual void before_forward(size_t block) {}
  virtual void after_forward(size_t block) {}
  virtual void before_backward(size_t block) {}
  virtual void after_backward(size_t block) {}
};

// A block's forward over its inputs (the residual stream first), owning what it needs: the backward
// calls it again after the model's forward has returned.
using BlockFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

struct BlockRunner {
  Checkpointing checkpointing;        // none by default: today's forward, unchanged
  std::shared_ptr<BlockHooks> hooks;  // none by default

  // fn(inputs), the forward of block `index` (`block`: its module, whose parameters fn reads). While
  // grad is enabled and the block is in training mode, a block the policy recomputes, or any block
  // when hooks are set, becomes one autograd node as the header describes; otherwise fn runs as it is.
  // Inputs that do not require grad (RoPE tables, or a stream from frozen weights) are fine.
  //
  // recomputable = false keeps the block's graph whatever the policy: for a block whose stream input
  // is also read outside the blocks (a hidden state for distillation). The node hands on the sum of
  // an input's gradients from inside the block, which then meets the outside reader's in another order
  // than without the node: equal up to rounding, no longer bit for bit. (With hooks set, such a block
  // still becomes a node, so this holds for it.)
  at::Tensor run(size_t index, torch::nn::Module& block, const BlockFn& fn, const std::vector<at::Tensor>& inputs,
                 bool recomputable = true) const;
};

}  // namespace bitqat::models
