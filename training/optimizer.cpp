#include "training/optimizer.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <optional>
#include <stdexcept>
#include <tuple>

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
  const auto device = params_.empty() ? at::Device(at::kCPU) : params_.front().second.device();
  step_ = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
}

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options,
             const std::vector<bool>& decay)
    : AdamW(std::move(params), options) {
  if (decay.size() != slots_.size()) throw std::invalid_argument("AdamW: one decay flag per parameter");
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i].decay = decay[i];
}

int64_t AdamW::steps_taken() const { return static_cast<int64_t>(step_.item<float>()); }

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

void AdamW::step(double lr, double weight_decay, const at::Tensor& found_inf) {
  at::NoGradGuard no_grad;
  std::optional<at::Tensor> inf;
  if (found_inf.defined()) inf = found_inf.to(step_.device(), at::kFloat).reshape({});
  step_.add_(1.0);
  // Fused groups: (decay, device, dtype) -> the lists _fused_adamw_ takes. Every entry of
  // state_steps is the one shared step tensor (the kernel only reads it).
  struct Group {
    std::vector<at::Tensor> p, g, m, v, steps;
  };
  std::map<std::tuple<bool, std::string, int>, Group> groups;
  std::vector<size_t> loop;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i].second;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    const auto& s = slots_[i];
    if (g.is_sparse() || g.scalar_type() != p.scalar_type() || s.exp_avg.scalar_type() != p.scalar_type() ||
        g.device() != p.device()) {
      loop.push_back(i);
      continue;
    }
    auto& gr = groups[{s.decay, p.device().str(), static_cast<int>(p.scalar_type())}];
    gr.p.push_back(p);
    gr.g.push_back(g);
    gr.m.push_back(s.exp_avg);
    gr.v.push_back(s.exp_avg_sq);
    gr.steps.push_back(p.device() == step_.device() ? step_ : step_.to(p.device()));
  }
  for (auto& [key, gr] : groups) {
    const double wd = std::get<0>(key) ? weight_decay : 0.0;
    std::optional<at::Tensor> gi;
    if (inf) gi = inf->device() == gr.p.front().device() ? *inf : inf->to(gr.p.front().device());
    at::_fused_adamw_(gr.p, gr.g, gr.m, gr.v, /*max_exp_avg_sqs=*/{}, gr.steps, lr, options_.beta1, options_.beta2, wd,
                      options_.eps, /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, gi);
  }
  if (!loop.empty()) {
    // The rare path (mixed dtypes): one host read decides, then the same rule per tensor.
    if (!inf || inf->item<float>() == 0.0f) {
      const double step = static_cast<double>(step_.item<float>());
      for (const size_t i : loop) loop_update(i, lr, weight_decay, step);
    }
  }
  if (inf) step_.sub_(*inf);
}

void AdamW::loop_update(size_t i, double lr, double weight_decay, double step) {
  const double bc1 = 1.0 - std::pow(options_.beta1, step);
  const double bc2 = 1.0 - std::pow(options_.beta2, step);
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  auto& p = params_[i].second;
  auto& s = slots_[i];
  const auto gf = p.grad().to(s.exp_avg.scalar_type());
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

std::vector<std::pair<std::string, at::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("step", at::tensor({steps_taken()}, at::kLong));
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
  const int64_t steps = get("step", at::Tensor()).item<int64_t>();
  if (steps < 0 || steps > (int64_t{1} << 24)) {
    throw core::UserError(fmt::format("{}: optimizer state 'step' is {}, expected 0 to 2^24", origin, steps));
  }
  step_.fill_(static_cast<double>(steps));
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
