#include "training/optimizer.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>

#include "core/error.hpp"

namespace bitqat::training {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  slots_.reserve(params_.size());
  for (const auto& [name, p] : params_) {
    Slot s;
    // fp32 state for fp32/bf16 parameters; double parameters (gradient checks) keep double.
    const auto dtype = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    s.exp_avg = at::zeros_like(p, p.options().dtype(dtype));
    s.exp_avg_sq = at::zeros_like(p, p.options().dtype(dtype));
    s.decay = !no_decay(name, p);
    slots_.push_back(std::move(s));
  }
}

bool AdamW::no_decay(const std::string& name, const at::Tensor& p) {
  if (p.dim() < 2) return true;  // biases, norm weights, scales
  return name.find("embed") != std::string::npos || name.find("norm") != std::string::npos;
}

size_t AdamW::decay_count() const {
  size_t n = 0;
  for (const auto& s : slots_) n += s.decay;
  return n;
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }
}

void AdamW::step(double lr, double weight_decay) {
  at::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    auto& s = slots_[i];
    const auto gf = g.to(s.exp_avg.scalar_type());
    if (s.decay && weight_decay != 0.0) p.mul_(1.0 - lr * weight_decay);
    s.exp_avg.mul_(options_.beta1).add_(gf, 1.0 - options_.beta1);
    s.exp_avg_sq.mul_(options_.beta2).addcmul_(gf, gf, 1.0 - options_.beta2);
    const auto denom = (s.exp_avg_sq.sqrt() / bc2_sqrt).add_(options_.eps);
    if (p.scalar_type() == s.exp_avg.scalar_type()) {
      p.addcdiv_(s.exp_avg, denom, -step_size);
    } else {
      p.copy_(p.to(s.exp_avg.scalar_type()).addcdiv_(s.exp_avg, denom, -step_size));
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("step", at::tensor({step_}, at::kLong));
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].first + ".exp_avg", slots_[i].exp_avg);
    out.emplace_back(params_[i].first + ".exp_avg_sq", slots_[i].exp_avg_sq);
  }
  return out;
}

void AdamW::load_state_tensors(const std::map<std::string, at::Tensor>& tensors, const std::string& origin,
                               const std::function<void(const at::Tensor&)>& copied) {
  auto get = [&](const std::string& key, const at::Tensor& like) {
    const auto it = tensors.find(key);
    if (it == tensors.end()) {
      throw core::UserError(
          fmt::format("{}: optimizer state '{}' is missing (was the checkpoint written by a "
                      "different model?)",
                      origin, key));
    }
    if (like.defined() && it->second.sizes() != like.sizes()) {
      throw core::UserError(fmt::format("{}: optimizer state '{}' has shape {}, the model needs {}", origin, key,
                                        fmt::join(it->second.sizes(), "x"), fmt::join(like.sizes(), "x")));
    }
    return it->second;
  };
  step_ = get("step", at::Tensor()).item<int64_t>();
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& name = params_[i].first;
    for (auto* slot : {&slots_[i].exp_avg, &slots_[i].exp_avg_sq}) {
      const auto& src = get(name + (slot == &slots_[i].exp_avg ? ".exp_avg" : ".exp_avg_sq"), *slot);
      slot->copy_(src);
      if (copied) copied(src);
    }
  }
}

}  // namespace bitqat::training
