#include "bitlinear/bit_linear.hpp"

#include <fmt/format.h>
#include <torch/nn/init.h>

#include <cmath>
#include <stdexcept>

#include "bitlinear/estimators.hpp"
#include "bitlinear/quantized_linear.hpp"

namespace bitqat::bitlinear {
namespace {

// Activation fake-quantization per (sample, position) over channels for NCHW maps.
at::Tensor fake_quantize_nchw(const at::Tensor& x, const ActQuantSpec& spec, double lambda) {
  if (spec.type != ActQuant::kPerToken) return fake_quantize_activation(x, spec, lambda);
  // Back in NCHW memory order with standard strides: the convolution's algorithm (and its rounding)
  // depends on the layout, and size-1 dimensions make a channels-last tensor look contiguous.
  return fake_quantize_activation(x.permute({0, 2, 3, 1}), spec, lambda)
      .permute({0, 3, 1, 2})
      .clone(at::MemoryFormat::Contiguous);
}

}  // namespace

BitLinearImpl::BitLinearImpl(BitLinearOptions options_) : options(std::move(options_)) {
  if (options.in_features < 1 || options.out_features < 1) {
    throw std::invalid_argument(fmt::format("BitLinear: in and out features must be >= 1, got {} and {}",
                                            options.in_features, options.out_features));
  }
  if (options.quant.weight.type != WeightQuant::kNone && options.quant.weight.granularity == Granularity::kPerKernel) {
    // Fail at construction, not at the first forward pass.
    throw std::invalid_argument(
        "BitLinear: per_kernel weight scales are for convolutions; use per_tensor, per_channel or per_group");
  }
  weight = register_parameter("weight", at::empty({options.out_features, options.in_features}));
  if (options.quant.weight.scale == ScaleSource::kLearned && options.quant.weight.type != WeightQuant::kNone) {
    if (options.quant.weight.granularity != Granularity::kPerChannel) {
      throw std::invalid_argument("BitLinear: a learned weight scale is per_channel (one per output row)");
    }
    weight_scale = register_parameter("weight_scale", at::empty({options.out_features}));
  }
  if (options.bias) bias = register_parameter("bias", at::empty({options.out_features}));
  if (options.sub_norm) norm = register_module("norm", RMSNorm(options.in_features, options.norm_eps));
  reset_parameters();
}

void BitLinearImpl::reset_parameters() {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
  init_scale();
}

void BitLinearImpl::init_scale() {
  if (!weight_scale.defined() || !weight.defined() || weight.is_meta()) return;  // meta: no values
  at::NoGradGuard no_grad;
  auto absmean = options.quant.weight;
  absmean.scale = ScaleSource::kAbsmean;
  weight_scale.copy_(quantize_weight(weight, absmean).scales.reshape({-1}));
}

void BitLinearImpl::set_lambdas(double lambda_w, double lambda_a) {
  check_lambda(lambda_w, "set_lambdas: lambda_w");
  check_lambda(lambda_a, "set_lambdas: lambda_a");
  lambda_w_ = lambda_w;
  lambda_a_ = lambda_a;
}

at::Tensor BitLinearImpl::forward(const at::Tensor& x) {
  if (kernel_ && kernel_->applies(*this, x)) return kernel_->forward(*this, x);
  if (norm) {
    // The SubLN and the activation codes in one pass (bitlinear/quantized_linear.hpp).
    auto fused = fused_forward({this}, x, InputNorm{});
    if (!fused.empty()) return fused[0];
  }
  return forward_quantized(quantize_input(x), x.scalar_type());
}

std::vector<at::Tensor> BitLinearImpl::fused_forward(const std::vector<BitLinearImpl*>& layers, const at::Tensor& x,
                                                     InputNorm pre) {
  if (layers.empty()) return {};
  const auto& first = *layers.front();
  std::vector<at::Tensor> weights, biases;
  std::vector<WeightQuantSpec> wspecs;
  for (const auto* l : layers) {
    if (!l->weight.defined() || l->learned_scale() || (l->kernel_ && l->kernel_->applies(*l, x)) ||
        l->lambda_w_ != 1.0 || l->lambda_a_ != 1.0) {
      return {};
    }
    const auto &a = l->options.quant.act, &b = first.options.quant.act;
    if (a.type != b.type || a.bits != b.bits || a.estimator != b.estimator || a.eps != b.eps) return {};
    if (l->norm) {
      if (layers.size() != 1 || pre.weight.defined()) return {};
      pre.weight = l->norm->weight;
      pre.eps = l->norm->eps;
    }
    weights.push_back(l->weight);
    biases.push_back(l->bias);
    wspecs.push_back(l->options.quant.weight);
  }
  if (!quantized_linears_applicable(x, pre, wspecs, first.options.quant.act)) return {};
  return quantized_linears(x, pre, weights, biases, wspecs, first.options.quant.act);
}

std::vector<at::Tensor> BitLinearImpl::forward_shared(const std::vector<BitLinearImpl*>& layers, const at::Tensor& x,
                                                      RMSNormImpl* norm) {
  InputNorm pre;
  if (norm) {
    pre.weight = norm->weight;
    pre.eps = norm->eps;
  }
  auto out = fused_forward(layers, x, pre);
  if (!out.empty()) return out;
  const auto xn = norm ? norm->forward(x) : x;
  bool share = layers.size() > 1;
  for (size_t i = 1; i < layers.size(); ++i) share = share && layers[0]->can_share_input(*layers[i], xn);
  if (share) {
    // One activation quantization for every layer reading the same input.
    const auto in = layers[0]->quantize_input(xn);
    for (auto* l : layers) out.push_back(l->forward_quantized(in, xn.scalar_type()));
  } else {
    for (auto* l : layers) out.push_back(l->forward(xn));
  }
  return out;
}

BitLinearImpl::QuantizedInput BitLinearImpl::quantize_input(const at::Tensor& x) {
  if (!weight.defined()) {
    throw std::logic_error("BitLinear::forward: the latent weights were replaced and the kernel does not apply");
  }
  QuantizedInput in;
  in.x = norm ? norm->forward_float(x) : x;
  in.exact = lambda_w_ == 1.0 && lambda_a_ == 1.0 && !learned_scale() &&
             quantized_linear_applicable(in.x, options.quant.weight, options.quant.act);
  if (in.exact) {
    auto c = quantize_input_codes(in.x, options.quant.act);
    in.codes = c.codes;
    in.scales = c.scales;
  } else {
    in.fake = fake_quantize_activation(in.x, options.quant.act, lambda_a_).to(x.scalar_type());
  }
  return in;
}

at::Tensor BitLinearImpl::forward_quantized(const QuantizedInput& in, at::ScalarType out_dtype) {
  if (in.exact) {
    return quantized_linear(in.x, ActCodes{in.codes, in.scales}, weight, bias, options.quant.weight, options.quant.act)
        .to(out_dtype);
  }
  const auto wq = learned_scale() ? fake_quantize_weight_learned(weight, weight_scale, options.quant.weight, lambda_w_)
                                  : fake_quantize_weight(weight, options.quant.weight, lambda_w_);
  return at::linear(in.fake, wq.to(in.fake.scalar_type()), bias.defined() ? bias.to(in.fake.scalar_type()) : bias);
}

bool BitLinearImpl::can_share_input(const BitLinearImpl& other, const at::Tensor& x) const {
  auto same_act = [](const ActQuantSpec& a, const ActQuantSpec& b) {
    return a.type == b.type && a.bits == b.bits && a.estimator == b.estimator && a.clip == b.clip && a.eps == b.eps;
  };
  auto same_weight = [](const WeightQuantSpec& a, const WeightQuantSpec& b) {
    return a.type == b.type && a.scale == b.scale;
  };
  const bool kernels = (kernel_ && kernel_->applies(*this, x)) || (other.kernel_ && other.kernel_->applies(other, x));
  return !norm && !other.norm && !kernels && weight.defined() && other.weight.defined() &&
         same_act(options.quant.act, other.options.quant.act) &&
         same_weight(options.quant.weight, other.options.quant.weight) && lambda_w_ == other.lambda_w_ &&
         lambda_a_ == other.lambda_a_;
}

QuantizedWeight BitLinearImpl::quantized_weight() const {
  if (!weight.defined()) {
    throw std::logic_error("BitLinear::quantized_weight: the latent weights were replaced (a packed layer)");
  }
  if (learned_scale()) return quantize_weight_learned(weight, weight_scale, options.quant.weight);
  return quantize_weight(weight, options.quant.weight);
}

void BitLinearImpl::replace_latent_weights(const std::string& name, std::shared_ptr<torch::nn::Module> child,
                                           std::shared_ptr<LinearKernel> kernel) {
  register_module(name, std::move(child));
  parameters_.erase("weight");
  weight = at::Tensor();
  if (weight_scale.defined()) {
    parameters_.erase("weight_scale");
    weight_scale = at::Tensor();
  }
  if (bias.defined()) {
    parameters_.erase("bias");
    bias = at::Tensor();
  }
  if (norm) {
    unregister_module("norm");
    norm = nullptr;
  }
  kernel_ = std::move(kernel);
  lambda_w_ = lambda_a_ = 1.0;
}

BitConv2dImpl::BitConv2dImpl(BitConv2dOptions options_) : options(std::move(options_)) {
  if (options.in_channels < 1 || options.out_channels < 1 || options.kernel_size < 1) {
    throw std::invalid_argument("BitConv2d: channels and kernel size must be >= 1");
  }
  weight = register_parameter(
      "weight", at::empty({options.out_channels, options.in_channels, options.kernel_size, options.kernel_size}));
  if (options.bias) bias = register_parameter("bias", at::empty({options.out_channels}));
  reset_parameters();
}

void BitConv2dImpl::reset_parameters() {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double fan_in = static_cast<double>(options.in_channels * options.kernel_size * options.kernel_size);
    const double bound = 1.0 / std::sqrt(fan_in);
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void BitConv2dImpl::set_lambdas(double lambda_w, double lambda_a) {
  check_lambda(lambda_w, "set_lambdas: lambda_w");
  check_lambda(lambda_a, "set_lambdas: lambda_a");
  lambda_w_ = lambda_w;
  lambda_a_ = lambda_a;
}

at::Tensor BitConv2dImpl::forward(const at::Tensor& x) {
  const auto xq = fake_quantize_nchw(x, options.quant.act, lambda_a_);
  const auto wq = fake_quantize_weight(weight, options.quant.weight, lambda_w_);
  return at::conv2d(xq, wq.to(xq.scalar_type()), bias.defined() ? bias.to(xq.scalar_type()) : bias,
                    {options.stride, options.stride}, {options.padding, options.padding});
}

QuantizedWeight BitConv2dImpl::quantized_weight() const { return quantize_weight(weight, options.quant.weight); }

}  // namespace bitqat::bitlinear
