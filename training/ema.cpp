#include "training/ema.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <set>

#include "core/error.hpp"

namespace bitqat::training {

Ema::Ema(std::vector<std::pair<std::string, at::Tensor>> params, double decay, int64_t start_step)
    : params_(std::move(params)), decay_(decay), start_step_(start_step) {
  at::NoGradGuard no_grad;
  for (const auto& [name, p] : params_) ema_.emplace_back(name, p.detach().clone());
}

void Ema::update(int64_t step, const at::Tensor& found_inf) {
  at::NoGradGuard no_grad;
  const double w = step <= start_step_ ? 1.0 : 1.0 - decay_;
  if (!found_inf.defined()) {
    for (size_t i = 0; i < ema_.size(); ++i) ema_[i].second.lerp_(params_[i].second.detach(), w);
    return;
  }
  // w where the update was applied, 0 where it was skipped.
  const auto weight = (1.0 - found_inf) * w;
  for (size_t i = 0; i < ema_.size(); ++i) {
    auto& e = ema_[i].second;
    e.lerp_(params_[i].second.detach(), weight.to(e.scalar_type()));
  }
}

void check_average_names(const std::vector<std::string>& params, const std::map<std::string, at::Tensor>& average,
                         const std::string& origin) {
  for (const auto& name : params) {
    if (!average.count(name)) throw core::UserError(fmt::format("{}: the average of {} is missing", origin, name));
  }
  const std::set<std::string> known(params.begin(), params.end());
  for (const auto& [name, t] : average) {
    if (!known.count(name)) {
      throw core::UserError(fmt::format("{}: {} is not a trainable parameter of this model", origin, name));
    }
  }
}

void Ema::load(const std::map<std::string, at::Tensor>& tensors, const std::string& origin) {
  at::NoGradGuard no_grad;
  std::vector<std::string> names;
  for (const auto& e : ema_) names.push_back(e.first);
  check_average_names(names, tensors, origin);
  for (auto& [name, e] : ema_) {
    const auto it = tensors.find(name);
    if (it->second.sizes() != e.sizes()) {
      throw core::UserError(fmt::format("{}: the average of {} has shape [{}], the parameter [{}]", origin, name,
                                        fmt::join(it->second.sizes(), ", "), fmt::join(e.sizes(), ", ")));
    }
    e.copy_(it->second);
  }
}

}  // namespace bitqat::training
