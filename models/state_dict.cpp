#include "models/state_dict.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <set>

#include "core/error.hpp"

namespace bitqat::models {

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

namespace {

void check_finite_one(const std::string& name, const at::Tensor& t, const std::string& origin) {
  if (!t.is_floating_point() || t.numel() == 0) return;
  const auto bad = at::isfinite(t).logical_not();
  if (!bad.any().item<bool>()) return;
  const auto first = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  throw core::UserError(fmt::format(
      "{}: tensor '{}' holds {} non-finite value(s) (the first, {}, at flat index {}); refusing it: the file is "
      "corrupted or came from a run that diverged",
      origin, name, bad.sum().item<int64_t>(), t.reshape({-1})[first].item<double>(), first));
}

}  // namespace

void check_finite(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& origin) {
  for (const auto& [name, t] : tensors) check_finite_one(name, t, origin);
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
    check_finite_one(name, it->second, origin);
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

}  // namespace bitqat::models
