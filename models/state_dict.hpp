// A module's tensors by dotted name (its state dict), and loading named tensors into a module with
// strict checks of names, shapes and finiteness: what checkpoints, imports and exports exchange.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::models {

// Parameters and buffers by dotted name, as CPU tensors (to_cpu = false: where they are, so that a
// checkpoint writer can bring them to the host one at a time).
std::vector<std::pair<std::string, at::Tensor>> model_tensors(const torch::nn::Module& module, bool to_cpu = true);

// A tensor read on demand, so that a loader holds one converted tensor at a time beside the model
// (imports dequantize or convert each tensor only when it is copied into place).
struct LazyTensor {
  std::vector<int64_t> shape;
  std::function<at::Tensor()> read;  // its values (any floating dtype; copied into the module)
  std::function<void()> release;     // optional: called once the values are copied (drops file pages)
};
using LazyTensors = std::map<std::string, LazyTensor>;
// Tensors already in memory, as lazy ones; release(t) (optional) is called after t is copied.
LazyTensors lazy_tensors(const std::map<std::string, at::Tensor>& tensors,
                         const std::function<void(const at::Tensor&)>& release = {});

// Copies tensors into the module's parameters and buffers. strict: every module tensor must be
// present with the same shape, and no extra tensor may be left over; a floating-point tensor holding
// NaN or infinity is refused. Errors are UserErrors naming `origin` and the tensor.
void load_model_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, bool strict = true);
// The same, reading each tensor only when it is copied (shapes are checked before any read).
void load_model_tensors(torch::nn::Module& module, const LazyTensors& tensors, const std::string& origin,
                        bool strict = true);

// Initialising a model from another model's tensors (init_from, a distillation teacher, a run
// quantized into a new one): load_model_tensors, strict, except for two kinds of tensors the source
// may lack: the names in `keep` (e.g. SubLN norms inserted into an imported model) keep the module's
// own values, and the learned weight scales (quant.weight.scale: learned, BitLinear's weight_scale)
// are set from the absmean of their layer's loaded latent weights (BitLinear::init_scale).
struct InitialLoad {
  std::vector<std::string> scales_from_absmean;  // the learned scales so set
  // "" or "; N learned weight scales set to the absmean of their rows", for the caller's log line.
  std::string note() const;
};
InitialLoad load_initial_tensors(torch::nn::Module& module, const LazyTensors& tensors, const std::string& origin,
                                 const std::vector<std::string>& keep = {});

// Throws UserError naming `origin` and the first tensor that holds NaN or infinity (with their count and
// the first one's index); integer tensors pass.
void check_finite(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& origin);

}  // namespace bitqat::models
