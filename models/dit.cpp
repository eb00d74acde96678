#include "models/dit.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <torch/nn/init.h>

#include <cmath>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"

namespace bitqat::models {
namespace {

// A block linear: the config's spec when selected (per_kernel, meant for the patch embedding, becomes
// per_channel as in BitCNN), full precision otherwise.
bitlinear::BitLinear make_linear(const std::string& name, int64_t in, int64_t out, bool sub_norm, const DiTConfig& c,
                                 const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
                                 const std::vector<std::string>& exclude) {
  bitlinear::BitLinearOptions o(in, out);
  o.bias = true;
  o.sub_norm = sub_norm;
  o.norm_eps = c.norm_eps;
  o.quant = bitlinear::name_selected(name, include, exclude) ? spec : bitlinear::QuantSpec::full_precision();
  if (o.quant.weight.granularity == bitlinear::Granularity::kPerKernel) {
    o.quant.weight.granularity = bitlinear::Granularity::kPerChannel;
  }
  return bitlinear::BitLinear(o);
}

// The patch embedding's quantization: per-kernel weight scales (XNOR-Net style, one per p x p
// kernel) and per-tensor activations (a patch of a one-channel image has one value per position,
// so per-position scales would quantize nothing).
bitlinear::QuantSpec patch_spec(const DiTConfig& c, const bitlinear::QuantSpec& spec,
                                const std::vector<std::string>& include, const std::vector<std::string>& exclude) {
  if (!c.quantize_patch_embed || !bitlinear::name_selected("patch_embed", include, exclude))
    return bitlinear::QuantSpec::full_precision();
  auto s = spec;
  s.weight.granularity = bitlinear::Granularity::kPerKernel;
  if (s.act.type != bitlinear::ActQuant::kNone) s.act.type = bitlinear::ActQuant::kPerTensor;
  return s;
}

at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x * (1 + scale) + shift;
}

at::Tensor layer_norm(const at::Tensor& x, double eps) { return at::layer_norm(x, {x.size(-1)}, {}, {}, eps); }

void xavier_zero_bias(bitlinear::BitLinear& l) {
  torch::nn::init::xavier_uniform_(l->weight);
  torch::nn::init::zeros_(l->bias);
}

}  // namespace

const core::Schema<DiTConfig>& DiTConfig::schema() {
  using C = DiTConfig;
  static const core::Schema<DiTConfig> s(
      {
          core::key("channels", &C::channels, "image channels (the data's)").range(1, 4096),
          core::key("height", &C::height, "image height in pixels (the data's)").range(1, 1 << 16),
          core::key("width", &C::width, "image width in pixels (the data's)").range(1, 1 << 16),
          core::key("patch_size", &C::patch_size, "side of the square patches that become tokens").range(1, 1 << 16),
          core::key("dim", &C::dim, "width of the residual stream").range(4, 1 << 16),
          core::key("n_layers", &C::n_layers, "transformer blocks").range(1, 1024),
          core::key("n_heads", &C::n_heads, "attention heads").range(1, 1024),
          core::key("mlp_dim", &C::mlp_dim, "hidden width of the MLP")
              .range(1, 1 << 20)
              .computed([](const C& c) { return 4 * c.dim; }, "4 * dim"),
          core::key("num_classes", &C::num_classes, "class labels (the data's)").range(1, 1 << 20),
          core::key("pos_embed", &C::pos_embed, "patch positions: a fixed 2-D sine-cosine table, or learned")
              .choices(kPosEmbedNames),
          core::key("freq_dim", &C::freq_dim, "sinusoidal timestep features").range(2, 1 << 16),
          core::key("sub_norm", &C::sub_norm, "SubLN: an RMSNorm before proj and fc2 (BitNet)"),
          core::key("quantize_patch_embed", &C::quantize_patch_embed,
                    "quantize patch_embed too, with per-kernel scales"),
          core::key("norm_eps", &C::norm_eps, "RMSNorm epsilon").range(1e-12, 1e-1),
          core::key("init_std", &C::init_std, "standard deviation of t_fc1, t_fc2 and y_embed at initialisation")
              .range(1e-6, 1.0),
          core::key("class_dropout", &C::class_dropout,
                    "fraction of training labels replaced by the null label (classifier-free guidance)")
              .range(0.0, 1.0)
              .check([](const double& v) { return v < 1.0; }, "a fraction in [0, 1) (1 would never train the labels)"),
          core::key("time_sampling", &C::time_sampling,
                    "how training draws the flow-matching time t: uniform, or logit_normal (SD3's rf/lognorm)")
              .choices(kTimeSamplingNames),
          core::key("logit_mean", &C::logit_mean, "logit_normal: the mean m of t = sigmoid(m + s n)").range(-10.0, 10.0),
          core::key("logit_std", &C::logit_std, "logit_normal: the standard deviation s of t = sigmoid(m + s n)")
              .range(1e-3, 10.0),
      },
      [](const core::Node& n, const C& c) {
        if (c.height % c.patch_size != 0 || c.width % c.patch_size != 0) {
          n.fail("patch_size", fmt::format("a divisor of model.height = {} and model.width = {}", c.height, c.width));
        }
        if (c.dim % c.n_heads != 0) n.fail("n_heads", fmt::format("a divisor of model.dim = {}", c.dim));
        if (c.pos_embed == PosEmbed::kSinusoidal && c.dim % 4 != 0) {
          n.fail("dim", "a multiple of 4 for the 2-D sine-cosine position table (or model.pos_embed: learned)");
        }
      });
  return s;
}

DiTConfig DiTConfig::from_yaml(const core::Node& n) {
  DiTConfig c;
  schema().parse_into(n, &c, {"kind"});
  return c;
}

at::Tensor timestep_features(const at::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(t.device());
  const auto freqs = at::exp(-std::log(10000.0) * at::arange(half, opts) / static_cast<double>(half));
  const auto args = (1000.0 * t.to(at::kDouble)).unsqueeze(1) * freqs.unsqueeze(0);
  auto emb = at::cat({at::cos(args), at::sin(args)}, -1);
  if (dim % 2 == 1) emb = at::cat({emb, at::zeros({t.size(0), 1}, opts)}, -1);
  return emb.to(t.scalar_type());
}

at::Tensor sincos_position_table(int64_t gh, int64_t gw, int64_t dim) {
  if (dim % 4 != 0)
    throw std::invalid_argument(fmt::format("sincos_position_table: dim {} is not a multiple of 4", dim));
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t quarter = dim / 4;
  const auto omega = at::pow(10000.0, -at::arange(quarter, opts) / static_cast<double>(quarter));
  auto axis = [&](const at::Tensor& pos) {
    const auto a = pos.unsqueeze(1) * omega.unsqueeze(0);
    return at::cat({at::sin(a), at::cos(a)}, 1);  // [n, dim / 2]
  };
  const auto rows = at::arange(gh, opts).repeat_interleave(gw);  // row of patch r * gw + col
  const auto cols = at::arange(gw, opts).repeat({gh});
  return at::cat({axis(rows), axis(cols)}, 1);
}

at::Tensor unpatchify(const at::Tensor& tokens, int64_t channels, int64_t height, int64_t width, int64_t p) {
  const int64_t B = tokens.size(0), gh = height / p, gw = width / p;
  return tokens.reshape({B, gh, gw, p, p, channels}).permute({0, 5, 1, 3, 2, 4}).reshape({B, channels, height, width});
}

DiTBlockImpl::DiTBlockImpl(const DiTConfig& c, size_t i, const bitlinear::QuantSpec& spec,
                           const std::vector<std::string>& inc, const std::vector<std::string>& exc)
    : n_heads(c.n_heads), head_dim(c.head_dim()), eps(c.norm_eps) {
  const std::string p = fmt::format("blocks.{}.", i);
  adaln = register_module("adaln", make_linear(p + "adaln", c.dim, 6 * c.dim, false, c, spec, inc, exc));
  qkv = register_module("qkv", make_linear(p + "qkv", c.dim, 3 * c.dim, false, c, spec, inc, exc));
  proj = register_module("proj", make_linear(p + "proj", c.dim, c.dim, c.sub_norm, c, spec, inc, exc));
  fc1 = register_module("fc1", make_linear(p + "fc1", c.dim, c.mlp_width(), false, c, spec, inc, exc));
  fc2 = register_module("fc2", make_linear(p + "fc2", c.mlp_width(), c.dim, c.sub_norm, c, spec, inc, exc));
}

at::Tensor DiTBlockImpl::forward(const at::Tensor& x, const at::Tensor& silu_c) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
  // shift, scale, gate of attention, then of the MLP (DiT's order).
  const auto m = adaln->forward(silu_c).unsqueeze(1).chunk(6, -1);
  const auto qkv_heads = qkv->forward(modulate(layer_norm(x, eps), m[0], m[1]))
                             .reshape({B, T, 3, n_heads, head_dim})
                             .permute({2, 0, 3, 1, 4});  // [3, B, heads, T, head_dim]
  const auto a = at::scaled_dot_product_attention(qkv_heads[0], qkv_heads[1], qkv_heads[2]);
  const auto h = x + m[2] * proj->forward(a.transpose(1, 2).reshape({B, T, D}));
  const auto f = fc2->forward(at::gelu(fc1->forward(modulate(layer_norm(h, eps), m[3], m[4])), "tanh"));
  return h + m[5] * f;
}

BitDiTImpl::BitDiTImpl(DiTConfig c, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
                       const std::vector<std::string>& exclude)
    : config(std::move(c)) {
  bitlinear::BitConv2dOptions po(config.channels, config.dim, config.patch_size);
  po.stride = config.patch_size;
  po.bias = true;
  po.quant = patch_spec(config, spec, include, exclude);
  patch_embed = register_module("patch_embed", bitlinear::BitConv2d(po));
  // A learned table starts from the fixed one (or from zeros when dim is not a multiple of 4).
  const auto table = config.dim % 4 == 0 ? sincos_position_table(config.height / config.patch_size,
                                                                 config.width / config.patch_size, config.dim)
                                               .to(at::kFloat)
                                               .unsqueeze(0)
                                         : at::zeros({1, config.tokens(), config.dim});
  if (config.pos_embed == PosEmbed::kSinusoidal) {
    pos_embed = register_buffer("pos_embed", table);
  } else {
    pos_embed = register_parameter("pos_embed", table.clone());
  }
  t_fc1 = register_module("t_fc1", torch::nn::Linear(config.freq_dim, config.dim));
  t_fc2 = register_module("t_fc2", torch::nn::Linear(config.dim, config.dim));
  y_embed = register_module("y_embed", torch::nn::Embedding(config.num_classes + 1, config.dim));
  layers = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layers; ++i) {
    blocks.push_back(DiTBlock(config, static_cast<size_t>(i), spec, include, exclude));
    layers->push_back(blocks.back());
  }
  final_adaln = register_module("final_adaln", torch::nn::Linear(config.dim, 2 * config.dim));
  final_linear = register_module("final_linear", torch::nn::Linear(config.dim, config.patch_values()));
  init_weights();
}

// DiT's initialize_weights: xavier-uniform linears with zero biases, the patch embedding like a
// linear over a flattened patch, N(0, 0.02^2) embedders, and adaLN-Zero.
void BitDiTImpl::init_weights() {
  at::NoGradGuard no_grad;
  const auto& w = patch_embed->weight;
  torch::nn::init::xavier_uniform_(w.view({w.size(0), -1}));
  torch::nn::init::zeros_(patch_embed->bias);
  for (auto* l : {&t_fc1, &t_fc2}) {
    (*l)->weight.normal_(0.0, config.init_std);
    torch::nn::init::zeros_((*l)->bias);
  }
  y_embed->weight.normal_(0.0, config.init_std);
  for (auto& b : blocks) {
    for (auto* l : {&b->qkv, &b->proj, &b->fc1, &b->fc2}) xavier_zero_bias(*l);
    torch::nn::init::zeros_(b->adaln->weight);
    torch::nn::init::zeros_(b->adaln->bias);
  }
  for (auto* l : {&final_adaln, &final_linear}) {
    torch::nn::init::zeros_((*l)->weight);
    torch::nn::init::zeros_((*l)->bias);
  }
}

at::Tensor BitDiTImpl::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& labels) {
  const auto& c = config;
  TORCH_CHECK(x.dim() == 4 && x.size(1) == c.channels && x.size(2) == c.height && x.size(3) == c.width,
              "BitDiT: expected images [B, ", c.channels, ", ", c.height, ", ", c.width, "], got ", x.sizes());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0) && labels.dim() == 1 && labels.size(0) == x.size(0),
              "BitDiT: expected t and labels of shape [", x.size(0), "], got ", t.sizes(), " and ", labels.sizes());
  auto h = patch_embed->forward(x).flatten(2).transpose(1, 2) + pos_embed.to(x.scalar_type());
  const auto te = t_fc2->forward(at::silu(t_fc1->forward(timestep_features(t.to(x.scalar_type()), c.freq_dim))));
  const auto silu_c = at::silu(te + y_embed->forward(labels));
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto b = blocks[i].ptr();
    h = block_runner.run(i, *b, [b](const std::vector<at::Tensor>& in) { return b->forward(in[0], in[1]); },
                         {h, silu_c});
  }
  const auto m = final_adaln->forward(silu_c).unsqueeze(1).chunk(2, -1);
  h = final_linear->forward(modulate(layer_norm(h, c.norm_eps), m[0], m[1]));
  return unpatchify(h, c.channels, c.height, c.width, c.patch_size);
}

}  // namespace bitqat::models
