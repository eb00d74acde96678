// A module's tensors by dotted name (its state dict), and loading named tensors into a module with
// strict checks of names, shapes and finiteness: what checkpoints, imports and exports exchange.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::models {

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

}  // namespace bitqat::models
