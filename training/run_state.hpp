// A run's random generator states in checkpoints (extra.safetensors), for exact resume.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::training {

// CPU and (when present) CUDA generator states, as uint8 tensors named rng.cpu, rng.cuda.N.
std::vector<std::pair<std::string, at::Tensor>> rng_states();
// Restores them; any other name, or a state LibTorch refuses, is a UserError naming `origin`.
void restore_rng_states(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);

}  // namespace bitqat::training
