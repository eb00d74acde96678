// BitLinear and BitConv2d: latent full-precision weights quantized in the forward pass, with
// separate lambdas for weights and activations (0 = full precision, 1 = fully quantized).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

#include "bitlinear/linear_kernel.hpp"
#include "bitlinear/quant_spec.hpp"
#include "bitlinear/quantized_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "bitlinear/rms_norm.hpp"

namespace bitqat::bitlinear {

struct BitLinearOptions {
  BitLinearOptions(int64_t in, int64_t out) : in_features(in), out_features(out) {}
  int64_t in_features;
  int64_t out_features;
  bool bias = false;
  bool sub_norm = false;  // RMSNorm on the input before activation quantization (SubLN)
  double norm_eps = 1e-6;
  QuantSpec quant;
};

struct BitLinearImpl : torch::nn::Module {
  explicit BitLinearImpl(BitLinearOptions options);
  void reset_parameters();  // same init as torch::nn::Linear (kaiming uniform a = sqrt(5)); then init_scale()
  // A learned scale (quant.weight.scale: learned): weight_scale = the absmean of each row of the latent
  // weight (the per-channel gamma of quantize_weight). Call it after new latent weights were loaded
  // (interop's init_from does); a no-op for other layers.
  void init_scale();
  bool learned_scale() const { return weight_scale.defined(); }
  // x: [..., in] -> [..., out]. An installed kernel that applies to x computes it; otherwise: sub_norm,
  // activation fake-quant, linear with the fake-quantized weight, bias (at lambdas 1 on the CPU, from
  // the integer codes: bitlinear/quantized_linear.hpp).
  at::Tensor forward(const at::Tensor& x);

  void set_lambdas(double lambda_w, double lambda_a);
  double lambda_w() const { return lambda_w_; }
  double lambda_a() const { return lambda_a_; }

  // An input quantized once for several layers that read it (q, k and v; gate and up): forward(x) is
  // forward_quantized(quantize_input(x)), and a layer for which can_share_input holds may take
  // another's quantize_input. exact: the codes feed the integer forward at lambdas 1
  // (bitlinear/quantized_linear.hpp); otherwise `fake` holds the fake-quantized activations.
  struct QuantizedInput {
    at::Tensor x;     // the input after the SubLN (the autograd path of the straight-through estimator)
    at::Tensor fake;  // fake-quantized activations in the input's dtype
    at::Tensor codes, scales;
    bool exact = false;
  };
  QuantizedInput quantize_input(const at::Tensor& x);
  at::Tensor forward_quantized(const QuantizedInput& in, at::ScalarType out_dtype);
  // Whether `other` computes the same quantize_input(x) as this layer (no SubLN on either, the same
  // quantization and lambdas, no installed kernel taking x).
  bool can_share_input(const BitLinearImpl& other, const at::Tensor& x) const;

  // Layers reading one input x through `pre` (an RMSNorm, optionally after relu(x)^2;
  // bitlinear/quantized_linear.hpp InputNorm), computed by one fused node (quantized_linears) when
  // every layer is fully quantized (lambdas 1), takes no installed kernel and has the same activation
  // spec, and the node applies to x (quantized_linears_applicable: float32 on the CPU, the identity
  // activation estimator, at most 3 layers). A layer's own SubLN is fused only for a single layer and
  // a `pre` without a norm. Returns one output per layer, or an empty list when these conditions
  // fail: the caller then composes the modules (the same outputs; with several layers the input's
  // gradient differs by the order of its sum over the layers).
  static std::vector<at::Tensor> fused_forward(const std::vector<BitLinearImpl*>& layers, const at::Tensor& x,
                                               InputNorm pre);
  // Layers reading one input x through `norm` (a block's RMSNorm; nullptr: none), one output each:
  // the fused node when fused_forward serves them; otherwise norm->forward(x) once, then one
  // quantize_input shared by all when the first layer can_share_input with every other, else each
  // layer's forward.
  static std::vector<at::Tensor> forward_shared(const std::vector<BitLinearImpl*>& layers, const at::Tensor& x,
                                                RMSNormImpl* norm);

  // The weights as the fully quantized layer sees them (codes and scales; with a learned scale
  // quantize_weight_learned), for packing and export.
  // Throws std::logic_error when the latent weights were replaced (a packed layer).
  QuantizedWeight quantized_weight() const;

  // A kernel for the inputs it applies to (bitlinear/linear_kernel.hpp); nullptr removes it.
  void set_kernel(std::shared_ptr<LinearKernel> kernel) { kernel_ = std::move(kernel); }
  LinearKernel* kernel() const { return kernel_.get(); }
  // Irreversibly replaces the latent weight, bias and SubLN by `child` (registered as `name`), with
  // `kernel` computing every forward from then on and lambdas 1: how a layer becomes packed.
  void replace_latent_weights(const std::string& name, std::shared_ptr<torch::nn::Module> child,
                              std::shared_ptr<LinearKernel> kernel);
  bool has_latent_weights() const { return weight.defined(); }

  BitLinearOptions options;
  at::Tensor weight;  // latent fp32 [out, in]; undefined once replaced
  at::Tensor bias;    // [out] or undefined
  // With quant.weight.scale: learned, the trained per-output-row scale [out] float32 (parameter
  // "weight_scale"; bitlinear/estimators.hpp fake_quantize_weight_learned); else undefined. A layer
  // with it always runs the fake-quant path (the exact integer forward and the CUDA training kernels
  // compute absmean scales).
  at::Tensor weight_scale;
  RMSNorm norm{nullptr};

 private:
  double lambda_w_ = 1.0;
  double lambda_a_ = 1.0;
  std::shared_ptr<LinearKernel> kernel_;
};
TORCH_MODULE(BitLinear);

struct BitConv2dOptions {
  BitConv2dOptions(int64_t in, int64_t out, int64_t kernel) : in_channels(in), out_channels(out), kernel_size(kernel) {}
  int64_t in_channels;
  int64_t out_channels;
  int64_t kernel_size;
  int64_t stride = 1;
  int64_t padding = 0;
  bool bias = false;
  // Activations are quantized per tensor by default for convolutions (per token makes no sense
  // for NCHW maps); kPerToken quantizes per (sample, spatial position) over channels.
  QuantSpec quant = {WeightQuantSpec{WeightQuant::kTernary, Granularity::kPerKernel},
                     ActQuantSpec{ActQuant::kPerTensor}};
};

struct BitConv2dImpl : torch::nn::Module {
  explicit BitConv2dImpl(BitConv2dOptions options);
  void reset_parameters();                  // same init as torch::nn::Conv2d
  at::Tensor forward(const at::Tensor& x);  // NCHW
  void set_lambdas(double lambda_w, double lambda_a);
  double lambda_w() const { return lambda_w_; }
  double lambda_a() const { return lambda_a_; }
  QuantizedWeight quantized_weight() const;

  BitConv2dOptions options;
  at::Tensor weight;  // [out, in, k, k]
  at::Tensor bias;

 private:
  double lambda_w_ = 1.0;
  double lambda_a_ = 1.0;
};
TORCH_MODULE(BitConv2d);

}  // namespace bitqat::bitlinear
