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
// present with the same shape, and no extra tensor may be left over; errors name `origin`.
void load_model_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, bool strict = true);

// CPU and (when present) CUDA generator states, as uint8 tensors named rng.cpu, rng.cuda.N.
std::vector<std::pair<std::string, at::Tensor>> rng_states();
void restore_rng_states(const std::map<std::string, at::Tensor>& tensors);

}  // namespace bitqat::training
