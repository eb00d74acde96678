#include "bitlinear/ops/w158a8_linear.hpp"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/autograd.h>

namespace bitqat::bitlinear::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Forward: int8 activations x packed ternary weights. Backward: identity STE with bf16 matmuls
// against the dequantized operands (the fake-quant path's gradients): the weight's from the
// kernel's cache (quantized once per weight version, not per micro-batch), the activation's from
// the int8 codes and per-token scales saved by the forward (no float copy of the input is kept).
// The output is bf16 when the input is bf16 or CUDA autocast is on (its dtype), else float32.
struct W158A8Linear : torch::autograd::Function<W158A8Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2d, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& packed, const at::Tensor& scales,
                            const at::Tensor& w_deq, int64_t kind, int64_t group, double act_eps) {
    PackedTernary p;
    p.packed = packed;
    p.scales = scales;
    p.kind = static_cast<cuda::ScaleKind>(kind);
    p.group = group;
    p.n = weight.size(0);
    p.k = weight.size(1);
    const auto xq = quantize_activations_int8(x2d, {}, 1e-6, act_eps);
    const auto out_dtype = output_dtype(x2d);
    ctx->save_for_backward({xq.q, xq.scales, w_deq});
    // An absent bias arrives as an empty placeholder (autograd functions take no undefined inputs).
    const bool has_bias = bias.numel() > 0;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["k"] = p.k;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x2d.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return w158a8_matmul(xq, p, has_bias ? bias : at::Tensor(), out_dtype);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& q = saved[0];
    const auto& xs = saved[1];
    const auto& w_deq = saved[2];
    const int64_t k = ctx->saved_data["k"].toInt();
    const auto g = grad_out[0].to(at::kBFloat16);
    const auto x_deq = (q.narrow(1, 0, k).to(at::kFloat) / xs.unsqueeze(1)).to(at::kBFloat16);
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto grad_x = at::matmul(g, w_deq).to(x_dtype);
    const auto grad_w = at::matmul(g.t(), x_deq).to(w_dtype);
    const auto grad_b = ctx->saved_data["has_bias"].toBool() ? grad_out[0].sum(0).to(at::kFloat) : at::Tensor();
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
  static at::ScalarType output_dtype(const at::Tensor& x) {
    if (x.scalar_type() == at::kBFloat16) return at::kBFloat16;
    if (at::autocast::is_autocast_enabled(at::kCUDA) && at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16) {
      return at::kBFloat16;
    }
    return at::kFloat;
  }
};

// Whether a weight type's codes fit the 2-bit packed layout's {-1, 0, +1} (ternary; binary's {-1, +1}).
bool packable(WeightQuant type) {
  const auto& t = traits(type);
  return t.quantize != nullptr && t.code_min >= -1 && t.code_max <= 1;
}

bool supported_granularity(const WeightQuantSpec& w) {
  return w.granularity == Granularity::kPerTensor || w.granularity == Granularity::kPerChannel ||
         (w.granularity == Granularity::kPerGroup && w.group_size % cuda::kGroupAlign == 0);
}

// The training kernel: weights quantized and packed once per weight version, int8 forward.
class TrainingKernel final : public LinearKernel {
 public:
  bool applies(const BitLinearImpl& layer, const at::Tensor& x) const override {
    return cuda_fast_path_applicable(layer, x);
  }
  at::Tensor forward(BitLinearImpl& layer, const at::Tensor& x) override {
    // A SubLN feeds float32 to the quantizer, as PackedBitLinear's fused norm does (same codes).
    const auto h = layer.norm ? layer.norm->forward_float(x) : x;
    const auto x2d = h.reshape({-1, layer.options.in_features}).contiguous();
    // Micro-batches of one optimizer step share the packed weights.
    const int64_t version = static_cast<int64_t>(layer.weight._version());
    const auto& ws = layer.options.quant.weight;
    if (!packed_.defined() || version_ != version || data_ != layer.weight.data_ptr()) {
      const auto p = pack_ternary(layer.weight.detach(), ws.granularity, ws.group_size, ws.eps);
      packed_ = p.packed;
      scales_ = p.scales;
      w_deq_ = dequantize_weight(quantize_weight(layer.weight.detach(), ws)).to(at::kBFloat16);
      version_ = version;
      data_ = layer.weight.data_ptr();
    }
    const auto bias = layer.bias.defined() ? layer.bias : at::empty({0}, layer.weight.options());
    const auto y = W158A8Linear::apply(x2d, layer.weight, bias, packed_, scales_, w_deq_,
                                       static_cast<int64_t>(scale_kind(ws.granularity)), ws.group_size,
                                       layer.options.quant.act.eps);
    auto shape = x.sizes().vec();
    shape.back() = layer.options.out_features;
    // bf16 stays bf16 (autocast's choice); a float32 output of a float32 input stays float32.
    return y.reshape(shape);
  }
  const at::Tensor& cached_packed() const { return packed_; }

 private:
  at::Tensor packed_, scales_;
  at::Tensor w_deq_;  // bf16 [out, in]: the quantized weight, dequantized, for the backward
  int64_t version_ = -1;
  const void* data_ = nullptr;
};

// The packed layer's kernel: every input goes to the PackedBitLinear child.
class PackedKernel final : public LinearKernel {
 public:
  explicit PackedKernel(PackedBitLinear packed) : packed_(std::move(packed)) {}
  bool applies(const BitLinearImpl&, const at::Tensor&) const override { return true; }
  at::Tensor forward(BitLinearImpl&, const at::Tensor& x) override {
    return packed_->forward(x).to(x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat);
  }
  const PackedBitLinearImpl* packed() const { return packed_.get(); }

 private:
  PackedBitLinear packed_;
};

}  // namespace

bool cuda_fast_path_applicable(const BitLinearImpl& layer, const at::Tensor& x) {
  const auto& q = layer.options.quant;
  // A learned scale runs the fake-quant path (its gradient is not in the kernels' backward).
  return x.is_cuda() && layer.weight.defined() && !layer.learned_scale() && layer.weight.is_cuda() &&
         layer.lambda_w() == 1.0 &&
         layer.lambda_a() == 1.0 && q.weight.type == WeightQuant::kTernary &&
         q.weight.estimator == Estimator::kIdentity && supported_granularity(q.weight) &&
         q.act.type == ActQuant::kPerToken && q.act.bits == 8 && q.act.estimator == Estimator::kIdentity &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

int install_training_kernels(torch::nn::Module& root) {
  int n = 0;
  for (const auto& m : root.modules(/*include_self=*/true)) {
    if (auto* l = m->as<BitLinearImpl>(); l && l->has_latent_weights()) {
      l->set_kernel(std::make_shared<TrainingKernel>());
      ++n;
    }
  }
  return n;
}

const at::Tensor& training_kernel_cache(const BitLinearImpl& layer) {
  static const at::Tensor none;
  const auto* k = dynamic_cast<const TrainingKernel*>(layer.kernel());
  return k ? k->cached_packed() : none;
}

void pack_layer(BitLinearImpl& layer) {
  if (!layer.has_latent_weights()) return;
  const auto& q = layer.options.quant;
  if (!packable(q.weight.type)) {
    throw std::invalid_argument(fmt::format(
        "pack_layer: weights are {}, expected a type whose codes are within {{-1, 0, 1}} (ternary or binary)",
        to_string(q.weight.type)));
  }
  if (q.weight.granularity == Granularity::kPerGroup && q.weight.group_size % cuda::kGroupAlign != 0) {
    throw std::invalid_argument(
        fmt::format("pack_layer: per_group group_size = {} must be a multiple of {} for the packed format",
                    q.weight.group_size, cuda::kGroupAlign));
  }
  if (q.act.type != ActQuant::kPerToken || q.act.bits != 8) {
    throw std::invalid_argument(
        fmt::format("pack_layer: activations are {} with {} bits, expected per_token with 8 bits",
                    to_string(q.act.type), q.act.bits));
  }
  PackedBitLinear packed(layer);
  layer.replace_latent_weights("packed", packed.ptr(), std::make_shared<PackedKernel>(packed));
}

std::vector<std::string> pack_for_inference(torch::nn::Module& root) {
  std::vector<std::string> packed;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    auto* lin = item.value()->as<BitLinearImpl>();
    if (!lin || lin->options.quant.weight.type == WeightQuant::kNone || !lin->has_latent_weights()) continue;
    try {
      pack_layer(*lin);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("{}: {}", item.key(), e.what()));
    }
    packed.push_back(item.key());
  }
  spdlog::info("pack_for_inference: packed {} layer(s) to 2-bit weights", packed.size());
  return packed;
}

const PackedBitLinearImpl* packed_of(const BitLinearImpl& layer) {
  const auto* k = dynamic_cast<const PackedKernel*>(layer.kernel());
  return k ? k->packed() : nullptr;
}

PackedBitLinearImpl::PackedBitLinearImpl(const BitLinearImpl& layer)
    : in_features(layer.options.in_features),
      out_features(layer.options.out_features),
      kind(scale_kind(layer.options.quant.weight.granularity)),
      group(layer.options.quant.weight.group_size),
      norm_eps(layer.options.norm_eps),
      act(layer.options.quant.act) {
  TORCH_CHECK(packable(layer.options.quant.weight.type), "PackedBitLinear: the layer's weights are ",
              to_string(layer.options.quant.weight.type), ", whose codes do not fit the 2-bit layout");
  TORCH_CHECK(act.type == ActQuant::kPerToken && act.bits == 8,
              "PackedBitLinear: needs 8-bit per-token activation quantization");
  const auto q = layer.quantized_weight();
  const auto p = pack_codes(q.codes, q.scales.to(at::kFloat), layer.options.quant.weight.granularity, group);
  packed = register_buffer("packed", p.packed);
  scales = register_buffer("scales", p.scales);
  if (layer.bias.defined()) bias = register_buffer("bias", layer.bias.detach().to(at::kFloat).clone());
  if (layer.norm) norm_weight = register_buffer("norm_weight", layer.norm->weight.detach().to(at::kFloat).clone());
}

int64_t PackedBitLinearImpl::weight_bytes() const { return packed.numel() * 4 + scales.numel() * 4; }

at::Tensor PackedBitLinearImpl::forward(const at::Tensor& x) {
  at::NoGradGuard no_grad;
  const auto x2d = x.reshape({-1, in_features}).contiguous();
  PackedTernary p;
  p.packed = packed;
  p.scales = scales;
  p.kind = kind;
  p.group = kind == cuda::ScaleKind::kPerGroup ? group : in_features;
  p.n = out_features;
  p.k = in_features;
  p.expanded = expanded;
  auto shape = x.sizes().vec();
  shape.back() = out_features;
  auto y = w158a8_linear(x2d.scalar_type() == at::kBFloat16 ? x2d : x2d.to(at::kFloat), norm_weight, norm_eps, act.eps,
                         p, bias, at::kFloat);
  expanded = p.expanded;  // kept when a kernel made it (the weights never change here)
  return y.reshape(shape);
}

}  // namespace bitqat::bitlinear::ops
