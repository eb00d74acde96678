#include "bitlinear/convert.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

namespace bitqat::bitlinear {
namespace {

bool glob_match(const char* p, const char* s) {
  // Iterative matcher with backtracking on the last '*'.
  const char* star = nullptr;
  const char* resume = nullptr;
  while (*s) {
    if (*p == '?' || *p == *s) {
      ++p;
      ++s;
    } else if (*p == '*') {
      star = p++;
      resume = s;
    } else if (star) {
      p = star + 1;
      s = ++resume;
    } else {
      return false;
    }
  }
  while (*p == '*') ++p;
  return *p == '\0';
}

// The Bit* replacement of `child`, or nullptr when it is neither a Linear nor a Conv2d.
std::shared_ptr<torch::nn::Module> make_replacement(const std::string& name,
                                                    const std::shared_ptr<torch::nn::Module>& child,
                                                    const QuantSpec& spec) {
  at::NoGradGuard no_grad;
  if (auto* lin = child->as<torch::nn::Linear>()) {
    BitLinearOptions o(lin->options.in_features(), lin->options.out_features());
    o.bias = lin->options.bias();
    o.quant = spec;
    auto bit = std::make_shared<BitLinearImpl>(o);
    bit->weight.copy_(lin->weight);
    if (o.bias) bit->bias.copy_(lin->bias);
    bit->to(lin->weight.device(), lin->weight.scalar_type());
    return bit;
  }
  if (auto* conv = child->as<torch::nn::Conv2d>()) {
    const auto& co = conv->options;
    const auto k = (*co.kernel_size())[0];
    // BitConv2d has one square kernel, one stride, symmetric zero padding and no groups or
    // dilation; anything else would change the layer's function, so it stays as it is.
    const auto* pad = std::get_if<torch::ExpandingArray<2>>(&co.padding());
    if ((*co.kernel_size())[1] != k || (*co.stride())[0] != (*co.stride())[1] || co.groups() != 1 ||
        (*co.dilation())[0] != 1 || (*co.dilation())[1] != 1 || pad == nullptr || (**pad)[0] != (**pad)[1] ||
        !std::holds_alternative<torch::enumtype::kZeros>(co.padding_mode())) {
      spdlog::warn(
          "convert_linears: {} is kept in full precision (BitConv2d needs a square kernel, equal strides, "
          "symmetric zero padding, groups 1 and dilation 1)",
          name);
      return nullptr;
    }
    BitConv2dOptions o(co.in_channels(), co.out_channels(), k);
    o.stride = (*co.stride())[0];
    o.padding = (**pad)[0];
    o.bias = co.bias();
    o.quant = spec;
    auto bit = std::make_shared<BitConv2dImpl>(o);
    bit->weight.copy_(conv->weight);
    if (o.bias) bit->bias.copy_(conv->bias);
    bit->to(conv->weight.device(), conv->weight.scalar_type());
    return bit;
  }
  return nullptr;
}

// Keeps a container's own storage in step with its registry after a swap.
void replace_in_container(torch::nn::Module& parent, const std::string& key,
                          const std::shared_ptr<torch::nn::Module>& bit) {
  if (auto* seq = parent.as<torch::nn::Sequential>()) {
    const size_t idx = std::stoul(key);
    auto it = seq->begin() + static_cast<std::ptrdiff_t>(idx);
    if (auto lin = std::dynamic_pointer_cast<BitLinearImpl>(bit)) {
      *it = torch::nn::AnyModule(lin);
    } else {
      *it = torch::nn::AnyModule(std::dynamic_pointer_cast<BitConv2dImpl>(bit));
    }
  } else if (auto* list = parent.as<torch::nn::ModuleList>()) {
    *(list->begin() + static_cast<std::ptrdiff_t>(std::stoul(key))) = bit;
  } else if (auto* dict = parent.as<torch::nn::ModuleDict>()) {
    for (auto& item : *dict) {
      if (item.key() == key) item.value() = bit;
    }
  }
  parent.replace_module(key, bit);
}

void convert_recursive(torch::nn::Module& module, const std::string& prefix, const std::vector<std::string>& include,
                       const std::vector<std::string>& exclude, const QuantSpec& spec,
                       std::vector<std::string>* replaced) {
  for (const auto& item : module.named_children()) {
    const std::string name = prefix.empty() ? item.key() : prefix + "." + item.key();
    auto child = item.value();
    if (name_selected(name, include, exclude)) {
      if (auto bit = make_replacement(name, child, spec)) {
        replace_in_container(module, item.key(), bit);
        replaced->push_back(name);
        continue;
      }
    }
    convert_recursive(*child, name, include, exclude, spec, replaced);
  }
}

}  // namespace

bool name_selected(const std::string& name, const std::vector<std::string>& include,
                   const std::vector<std::string>& exclude) {
  bool in = include.empty();
  for (const auto& p : include) in = in || glob_match(p.c_str(), name.c_str());
  if (!in) return false;
  for (const auto& p : exclude) {
    if (glob_match(p.c_str(), name.c_str())) return false;
  }
  return true;
}

std::vector<std::string> convert_linears(torch::nn::Module& root, const std::vector<std::string>& include,
                                         const std::vector<std::string>& exclude, const QuantSpec& spec) {
  std::vector<std::string> replaced;
  convert_recursive(root, "", include, exclude, spec, &replaced);
  spdlog::info("convert_linears: replaced {} layer(s){}{}", replaced.size(), replaced.empty() ? "" : ": ",
               fmt::join(replaced, ", "));
  return replaced;
}

std::vector<std::string> quantized_layer_names(const torch::nn::Module& root) {
  std::vector<std::string> out;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (const auto* l = item.value()->as<BitLinearImpl>()) {
      if (l->options.quant.weight.type != WeightQuant::kNone) out.push_back(item.key());
    } else if (const auto* c = item.value()->as<BitConv2dImpl>()) {
      if (c->options.quant.weight.type != WeightQuant::kNone) out.push_back(item.key());
    }
  }
  return out;
}

std::vector<std::pair<std::string, BitLinearImpl*>> learned_scales(torch::nn::Module& root) {
  std::vector<std::pair<std::string, BitLinearImpl*>> out;
  for (const auto& item : root.named_modules("", /*include_self=*/true)) {
    if (auto* l = item.value()->as<BitLinearImpl>(); l && l->learned_scale()) {
      out.emplace_back(item.key().empty() ? "weight_scale" : item.key() + ".weight_scale", l);
    }
  }
  return out;
}

int set_quant_lambdas(torch::nn::Module& root, double lambda_w, double lambda_a) {
  int n = 0;
  for (const auto& m : root.modules(/*include_self=*/true)) {
    if (auto* lin = m->as<BitLinearImpl>()) {
      lin->set_lambdas(lambda_w, lambda_a);
      ++n;
    } else if (auto* conv = m->as<BitConv2dImpl>()) {
      conv->set_lambdas(lambda_w, lambda_a);
      ++n;
    }
  }
  return n;
}

}  // namespace bitqat::bitlinear
