// AdamW (decoupled weight decay, Loshchilov & Hutter 2019; PyTorch's update rule) over named
// parameters in two groups: with and without weight decay. State is keyed by parameter name, so
// checkpoints are plain named tensors and resume is exact.
//
// The update is ATen's fused AdamW (`at::_fused_adamw_`: one vectorized CPU pass or one CUDA
// multi-tensor kernel per group) for every parameter whose gradient and state share its dtype;
// others (bf16 parameters with fp32 state) take an elementwise loop with the same rule. The step
// count lives in a device tensor so a skipped step (`found_inf`) costs no host sync.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::training {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
};

class AdamW {
 public:
  // `params`: (name, tensor) pairs; names matching no_decay(name, tensor) get no weight decay.
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options);
  // With the weight-decay group given per parameter (`decay[i]` for params[i]): for flat shards,
  // whose shape no longer tells (sharded data parallelism).
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options, const std::vector<bool>& decay);

  // One update with this step's learning rate and weight decay (weight decay applies to the decay
  // group only). Parameters without a gradient are left untouched. `found_inf`, when given, is a
  // float32 scalar on the parameters' device: where it holds 1 the parameters, the state and the
  // step count are left as they were (decided on the device; 0 means update).
  void step(double lr, double weight_decay, const at::Tensor& found_inf = at::Tensor());
  void zero_grad();

  // Norms, biases, embeddings and any 1-D tensor take no weight decay (BitNet / GPT practice).
  static bool no_decay(const std::string& name, const at::Tensor& p);

  // name.exp_avg, name.exp_avg_sq (on the parameters' device: a checkpoint writer brings them to the
  // host one at a time) and a global "step" count.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Restores what state_tensors() wrote; throws UserError naming a missing or mis-shaped entry.
  // `copied` (optional) is called with each source tensor once it was copied (to release its pages).
  void load_state_tensors(const std::map<std::string, at::Tensor>& tensors, const std::string& origin,
                          const std::function<void(const at::Tensor&)>& copied = {});

  // Updates taken so far (reads the device step count: a host sync).
  int64_t steps_taken() const;
  size_t decay_count() const;

 private:
  struct Slot {
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
    bool decay = true;
  };
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<Slot> slots_;
  AdamWOptions options_;
  at::Tensor step_;  // float32 scalar on the first parameter's device: exact to 2^24 steps
  void loop_update(size_t i, double lr, double weight_decay, double step);
};

}  // namespace bitqat::training
