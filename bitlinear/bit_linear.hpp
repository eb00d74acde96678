// BitLinear and BitConv2d: latent full-precision weights quantized in the forward pass, with
// separate lambdas for weights and activations (0 = full precision, 1 = fully quantized).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "bitlinear/quantizers.hpp"
#include "bitlinear/rms_norm.hpp"

namespace bitqat::bitlinear {

namespace ops {
struct PackedBitLinearImpl;
}

// What a Bit* layer quantizes and how; shared by BitLinear and BitConv2d and set from the config.
struct QuantSpec {
  WeightQuantSpec weight;  // weight.type == kNone: weights stay full precision
  ActQuantSpec act;        // act.type == kNone: activations stay full precision
};

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
  void reset_parameters();  // same init as torch::nn::Linear (kaiming uniform a = sqrt(5))
  // x: [..., in] -> [..., out]. Order: sub_norm, activation fake-quant, linear with the
  // fake-quantized weight, bias.
  at::Tensor forward(const at::Tensor& x);

  void set_lambdas(double lambda_w, double lambda_a);
  double lambda_w() const { return lambda_w_; }
  double lambda_a() const { return lambda_a_; }
  // The weights as the fully quantized layer sees them (codes and scales), for packing and export.
  // Throws for a packed layer (its latent weights are gone).
  QuantizedWeight quantized_weight() const;

  // Switches the layer to inference on 2-bit packed weights (ops::PackedBitLinear, registered as
  // child `packed`, lambdas 1): the latent weight and the SubLN module are dropped (the packed layer
  // keeps the norm weight), so the layer's tensors become packed.{packed, scales, norm_weight, bias}.
  // Needs ternary weights (per tensor, per channel or per group of a multiple of 64) and 8-bit per
  // token activations; throws std::invalid_argument naming what does not fit. Irreversible.
  void to_packed();
  bool is_packed() const { return packed_ != nullptr; }

  BitLinearOptions options;
  at::Tensor weight;  // latent fp32 [out, in]
  at::Tensor bias;    // [out] or undefined
  RMSNorm norm{nullptr};

  // The W1.58A8 path's packed weights, valid for one version of `weight` (bitlinear/ops).
  struct PackCache {
    at::Tensor packed, scales;
    int64_t version = -1;
    const void* data = nullptr;
  } pack_cache;

 private:
  double lambda_w_ = 1.0;
  double lambda_a_ = 1.0;
  std::shared_ptr<ops::PackedBitLinearImpl> packed_;
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
