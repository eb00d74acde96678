// BitDiT: a class-conditional diffusion transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion
// Models with Transformers", the adaLN-Zero variant) for C x H x W images, trained here as a velocity
// field by flow matching (models/flow.hpp). Every linear inside the blocks is a BitLinear selected by
// quant.include / quant.exclude; the patch embedding is a BitConv2d (per-kernel scales when
// quantized, full precision by default, like the LM's embeddings); the timestep and label embedders
// and the final layer stay full precision.
//
//   patch_embed   BitConv2d C -> dim, kernel = stride = p: [B, C, H, W] -> T = (H/p)(W/p) tokens
//   pos_embed     [1, T, dim]: the fixed 2-D sine-cosine table (a buffer), or a parameter that
//                 starts from it (learned)
//   t_fc1, t_fc2  the timestep embedder (DiT's TimestepEmbedder): sinusoidal features of 1000 t
//                 (freq_dim of them), then t_fc1 (freq_dim -> dim), SiLU, t_fc2 (dim -> dim)
//   y_embed       [num_classes + 1, dim]; row num_classes is the null label of classifier-free
//                 guidance (Ho & Salimans 2022)
//   c             t_fc2(SiLU(t_fc1(features(t)))) + y_embed(y)
//   blocks.{i}    adaln (dim -> 6 dim) on SiLU(c) gives shift, scale, gate for attention and MLP;
//                 x += gate_a * proj(attention(qkv(modulate(LN(x), shift_a, scale_a))))
//                 x += gate_m * fc2(GELU_tanh(fc1(modulate(LN(x), shift_m, scale_m))))
//                 with LN a layer norm without affine parameters (eps norm_eps),
//                 modulate(x, shift, scale) = x * (1 + scale) + shift and multi-head softmax
//                 attention (heads of dim / n_heads, no mask)
//   final_adaln   (dim -> 2 dim) on SiLU(c) gives shift, scale; final_linear (dim -> p p C) on
//                 modulate(LN(x), shift, scale); then the tokens are put back as [B, C, H, W]
//
// Module names (the contract for checkpoints, quant.include and the packed export): patch_embed,
// pos_embed, t_fc1, t_fc2, y_embed, blocks.{i}.{adaln, qkv, proj, fc1, fc2}, final_adaln, final_linear.
//
// adaLN-Zero: every adaln weight and bias and final_linear start at zero, so each block starts
// as the identity and the model's first output is 0. Linears have biases, as in DiT.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"
#include "models/recompute.hpp"

namespace bitqat::models {

// The patch tokens' positions: a fixed 2-D sine-cosine table, or a learned one.
enum class PosEmbed { kSinusoidal, kLearned };
inline constexpr std::array<core::EnumName<PosEmbed>, 2> kPosEmbedNames = {
    {{PosEmbed::kSinusoidal, "sinusoidal"}, {PosEmbed::kLearned, "learned"}}};

// How training draws a sample's time t of the flow-matching path (models/flow.hpp): uniform in
// [0, 1), or logit-normal, t = sigmoid(m + s n) with n ~ N(0, 1) (Esser et al. 2024, "Scaling
// Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3), section 3.1: rf/lognorm,
// which puts more of the training on the middle of the path).
enum class TimeSampling { kUniform, kLogitNormal };
inline constexpr std::array<core::EnumName<TimeSampling>, 2> kTimeSamplingNames = {
    {{TimeSampling::kUniform, "uniform"}, {TimeSampling::kLogitNormal, "logit_normal"}}};

struct DiTConfig {
  int64_t channels = 1;  // C
  int64_t height = 28;   // H
  int64_t width = 28;    // W
  int64_t patch_size = 4;
  int64_t dim = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t mlp_dim = 0;  // 0: 4 * dim
  int64_t num_classes = 10;
  PosEmbed pos_embed = PosEmbed::kSinusoidal;
  int64_t freq_dim = 256;             // sinusoidal timestep features
  bool sub_norm = false;              // SubLN (RMSNorm) before proj and fc2 (BitNet)
  bool quantize_patch_embed = false;  // patch_embed becomes ternary / binary with per-kernel scales
  double norm_eps = 1e-6;
  double init_std = 0.02;  // t_fc1, t_fc2 and y_embed weights start from N(0, init_std^2) (DiT)
  // The objective's label dropout (DiT's LabelEmbedder): the fraction of training samples whose label
  // is replaced by the null label, so that one network learns the conditional and the unconditional
  // velocity. Changes neither the tensors nor the function (model_identity leaves it out).
  double class_dropout = 0.1;
  // The objective's time sampling (above); like class_dropout it changes neither the tensors nor the
  // function. The held-out loss always draws t uniformly, so runs that differ here compare.
  TimeSampling time_sampling = TimeSampling::kUniform;
  double logit_mean = 0.0;  // m of logit_normal
  double logit_std = 1.0;   // s of logit_normal

  // The model: section of kind dit, declared once.
  static const core::Schema<DiTConfig>& schema();
  static DiTConfig from_yaml(const core::Node& model);  // validates (also the `kind` key)
  int64_t tokens() const { return (height / patch_size) * (width / patch_size); }
  int64_t patch_values() const { return patch_size * patch_size * channels; }
  int64_t head_dim() const { return dim / n_heads; }
  int64_t mlp_width() const { return mlp_dim > 0 ? mlp_dim : 4 * dim; }
  int64_t null_class() const { return num_classes; }
};

struct DiTBlockImpl : torch::nn::Module {
  DiTBlockImpl(const DiTConfig& c, size_t index, const bitlinear::QuantSpec& spec,
               const std::vector<std::string>& include, const std::vector<std::string>& exclude);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& silu_c);  // x [B, T, dim], silu_c [B, dim]
  bitlinear::BitLinear adaln{nullptr}, qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  int64_t n_heads, head_dim;
  double eps;
};
TORCH_MODULE(DiTBlock);

struct BitDiTImpl : torch::nn::Module {
  BitDiTImpl(DiTConfig config, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
             const std::vector<std::string>& exclude);
  // x [B, C, H, W] and t [B] (flow time in [0, 1]) in the parameters' dtype (float32, or float64 for a
  // model moved to double), labels [B] int64 in [0, num_classes] (num_classes: the null label)
  // -> velocity [B, C, H, W] in the same dtype.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& labels);

  DiTConfig config;
  bitlinear::BitConv2d patch_embed{nullptr};
  at::Tensor pos_embed;  // [1, T, dim]
  torch::nn::Linear t_fc1{nullptr}, t_fc2{nullptr};
  torch::nn::Embedding y_embed{nullptr};
  torch::nn::ModuleList layers{nullptr};  // registered as "blocks"
  std::vector<DiTBlock> blocks;
  torch::nn::Linear final_adaln{nullptr}, final_linear{nullptr};
  // Runs the blocks of forward: activation checkpointing and block hooks (models/recompute.hpp).
  BlockRunner block_runner;

 private:
  void init_weights();
};
TORCH_MODULE(BitDiT);

// DiT's TimestepEmbedder features: for t [B], cat(cos(1000 t f), sin(1000 t f)) with
// f_i = 10000^(-i / half), i < half = dim / 2 (a zero column is appended for an odd dim). [B, dim] in
// t's dtype; the factor 1000 maps flow time [0, 1] onto DiT's timestep range.
at::Tensor timestep_features(const at::Tensor& t, int64_t dim);

// The fixed 2-D sine-cosine position table (MAE / DiT) for a gh x gw grid of patches, row-major:
// [gh * gw, dim] float64, the first dim/2 columns encode the row, the last dim/2 the column, each as
// cat(sin(pos w), cos(pos w)) with w_i = 10000^(-i / (dim/4)). dim must be a multiple of 4.
at::Tensor sincos_position_table(int64_t gh, int64_t gw, int64_t dim);

// [B, T, p p C] tokens (row-major patches, each patch row-major with channels last, DiT's layout)
// -> [B, C, H, W].
at::Tensor unpatchify(const at::Tensor& tokens, int64_t channels, int64_t height, int64_t width, int64_t patch);

}  // namespace bitqat::models
