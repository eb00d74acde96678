// AdamW (decoupled weight decay, PyTorch's update rule) over named parameters in two groups:
// with and without weight decay. State is keyed by parameter name, so checkpoints are plain named
// tensors and resume is exact.
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

  // One update with this step's learning rate and weight decay (weight decay applies to the decay
  // group only). Parameters without a gradient are left untouched.
  void step(double lr, double weight_decay);
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

  int64_t steps_taken() const { return step_; }
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
  int64_t step_ = 0;
};

}  // namespace bitqat::training
