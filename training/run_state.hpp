// Moving a run's state in and out of checkpoints: model tensors by name, optimizer state, RNG
// states, and loading the model of an existing run directory (for eval, generate, export).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::training {

// Parameters and buffers by dotted name, as CPU tensors.
std::vector<std::pair<std::string, at::Tensor>> model_tensors(const torch::nn::Module& module);

// Copies tensors into the module's parameters and buffers. strict: every module tensor must be
// present with the same shape, and no extra tensor may be left over; a floating-point tensor holding
// NaN or infinity is refused. Errors are UserErrors naming `origin` and the tensor.
void load_model_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, bool strict = true);

// Throws UserError naming `origin` and the first tensor that holds NaN or infinity (with their count and
// the first one's index); integer tensors pass.
void check_finite(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& origin);

// CPU and (when present) CUDA generator states, as uint8 tensors named rng.cpu, rng.cuda.N.
std::vector<std::pair<std::string, at::Tensor>> rng_states();
// Restores them; any other name, or a state LibTorch refuses, is a UserError naming `origin`.
void restore_rng_states(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);

}  // namespace bitqat::training
