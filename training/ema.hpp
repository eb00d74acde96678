// An exponential moving average (EMA) of a model's parameters, the weights diffusion models (DiT,
// SD3) and many LMs are evaluated with: after the update of step s (1-based),
//   ema <- p                                  for s <= start_step,
//   ema <- decay * ema + (1 - decay) * p      after,
// computed as ATen's lerp (ema + w (p - ema); with w = 1 it is p exactly). For a BitLinear the
// average is of the latent full-precision weights; the quantizer runs on the averaged weights when
// they are loaded. A step whose update was skipped (non-finite) leaves the average unchanged, decided
// on the device like the optimizer's skip (no host sync). Every rank computes the same average from
// the same parameters, so data parallelism keeps it identical.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::training {

// The tensors of an average (a checkpoint's ema.safetensors) against the names of the model's
// trainable parameters: UserError naming `origin` for a parameter without its average or a tensor
// that averages no parameter. What train.ema writes passes; run_loader and Ema::load both hold to it.
void check_average_names(const std::vector<std::string>& params, const std::map<std::string, at::Tensor>& average,
                         const std::string& origin);

class Ema {
 public:
  // `params`: (name, parameter) pairs; the average starts as a copy of each (same dtype and device).
  Ema(std::vector<std::pair<std::string, at::Tensor>> params, double decay, int64_t start_step);

  // After the optimizer's update of `step` (1-based). `found_inf`, when defined, is a float32
  // scalar on the parameters' device: 1 leaves the average as it was (the update was skipped).
  void update(int64_t step, const at::Tensor& found_inf = at::Tensor());

  // (name, average) pairs, on the parameters' device.
  const std::vector<std::pair<std::string, at::Tensor>>& tensors() const { return ema_; }

  // Restores what tensors() held (a checkpoint's ema.safetensors); UserError naming `origin` and the
  // tensor when one is missing, mis-shaped or not a parameter.
  void load(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<std::pair<std::string, at::Tensor>> ema_;
  double decay_;
  int64_t start_step_;
};

}  // namespace bitqat::training
