#include "training/run_state.hpp"

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <set>

#include "core/error.hpp"

namespace bitqat::training {

std::vector<std::pair<std::string, at::Tensor>> model_tensors(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value().detach().cpu().contiguous());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value().detach().cpu().contiguous());
  }
  return out;
}

void load_model_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, bool strict) {
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  auto load = [&](const std::string& name, at::Tensor& dst) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      if (strict) {
        throw core::UserError(
            fmt::format("{}: tensor '{}' is missing: the checkpoint was written by a "
                        "different model",
                        origin, name));
      }
      return;
    }
    if (it->second.sizes() != dst.sizes()) {
      throw core::UserError(fmt::format("{}: tensor '{}' has shape [{}], the model needs [{}]", origin, name,
                                        fmt::join(it->second.sizes(), ", "), fmt::join(dst.sizes(), ", ")));
    }
    dst.copy_(it->second);
    used.insert(name);
  };
  for (auto& item : module.named_parameters(true)) load(item.key(), item.value());
  for (auto& item : module.named_buffers(true)) load(item.key(), item.value());
  if (strict) {
    for (const auto& [name, t] : tensors) {
      if (!used.count(name)) {
        throw core::UserError(
            fmt::format("{}: tensor '{}' is not part of this model (was the checkpoint written "
                        "by a different model config?)",
                        origin, name));
      }
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> rng_states() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto& ctx = at::globalContext();
  out.emplace_back("rng.cpu", ctx.defaultGenerator(at::Device(at::kCPU)).get_state());
  if (ctx.hasCUDA()) {
    const auto n = static_cast<int>(at::detail::getCUDAHooks().deviceCount());
    for (int i = 0; i < n; ++i) {
      out.emplace_back(fmt::format("rng.cuda.{}", i), ctx.defaultGenerator(at::Device(at::kCUDA, i)).get_state());
    }
  }
  return out;
}

void restore_rng_states(const std::map<std::string, at::Tensor>& tensors) {
  auto& ctx = at::globalContext();
  for (const auto& [name, state] : tensors) {
    if (name == "rng.cpu") {
      at::Generator g = ctx.defaultGenerator(at::Device(at::kCPU));
      g.set_state(state);
    } else if (name.rfind("rng.cuda.", 0) == 0 && ctx.hasCUDA()) {
      const int idx = std::stoi(name.substr(9));
      if (idx < static_cast<int>(at::detail::getCUDAHooks().deviceCount())) {
        at::Generator g = ctx.defaultGenerator(at::Device(at::kCUDA, idx));
        g.set_state(state);
      }
    }
  }
}

}  // namespace bitqat::training
