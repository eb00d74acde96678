#include "models/state_dict.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <set>
#include <tuple>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"

namespace bitqat::models {

std::vector<std::pair<std::string, at::Tensor>> model_tensors(const torch::nn::Module& module, bool to_cpu) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    out.emplace_back(name, to_cpu ? t.detach().cpu().contiguous() : t.detach());
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) add(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) add(item.key(), item.value());
  return out;
}

LazyTensors lazy_tensors(const std::map<std::string, at::Tensor>& tensors,
                         const std::function<void(const at::Tensor&)>& release) {
  LazyTensors out;
  for (const auto& [name, t] : tensors) {
    LazyTensor l{t.sizes().vec(), [t] { return t; }, {}};
    if (release) l.release = [release, t] { release(t); };
    out.emplace(name, std::move(l));
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
  load_model_tensors(module, lazy_tensors(tensors), origin, strict);
}

void load_model_tensors(torch::nn::Module& module, const LazyTensors& tensors, const std::string& origin, bool strict) {
  at::NoGradGuard no_grad;
  std::vector<std::tuple<std::string, const LazyTensor*, at::Tensor>> plan;
  std::set<std::string> used;
  auto find = [&](const std::string& name, at::Tensor& dst) {
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
    if (at::IntArrayRef(it->second.shape) != dst.sizes()) {
      throw core::UserError(fmt::format("{}: tensor '{}' has shape [{}], the model needs [{}]", origin, name,
                                        fmt::join(it->second.shape, ", "), fmt::join(dst.sizes(), ", ")));
    }
    plan.emplace_back(name, &it->second, dst);
    used.insert(name);
  };
  for (auto& item : module.named_parameters(true)) find(item.key(), item.value());
  for (auto& item : module.named_buffers(true)) find(item.key(), item.value());
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
  // Names and shapes agree: read, check and copy one tensor at a time.
  for (auto& [name, src, dst] : plan) {
    const auto values = src->read();
    check_finite_one(name, values, origin);
    dst.copy_(values);
    if (src->release) src->release();
  }
}

std::string InitialLoad::note() const {
  if (scales_from_absmean.empty()) return {};
  return fmt::format("; {} learned weight scales set to the absmean of their rows", scales_from_absmean.size());
}

InitialLoad load_initial_tensors(torch::nn::Module& module, const LazyTensors& tensors, const std::string& origin,
                                 const std::vector<std::string>& keep) {
  InitialLoad r;
  std::vector<bitlinear::BitLinearImpl*> scaled;
  for (const auto& [name, layer] : bitlinear::learned_scales(module)) {
    if (!tensors.count(name)) {
      r.scales_from_absmean.push_back(name);
      scaled.push_back(layer);
    }
  }
  if (keep.empty() && scaled.empty()) {
    load_model_tensors(module, tensors, origin);
    return r;
  }
  // Kept tensors and missing scales go through the strict load with the module's own values; then the
  // scales follow the loaded weights.
  const auto params = module.named_parameters(true);
  std::map<std::string, at::Tensor> own;
  for (const auto& name : keep) own.emplace(name, params[name].detach().clone());
  for (const auto& name : r.scales_from_absmean) own.emplace(name, params[name].detach().clone());
  LazyTensors with = tensors;
  for (auto& [name, t] : lazy_tensors(own)) with.emplace(name, std::move(t));
  load_model_tensors(module, with, origin);
  for (auto* layer : scaled) layer->init_scale();
  return r;
}

}  // namespace bitqat::models
