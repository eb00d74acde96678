#include "bitlinear/quantized_linear.hpp"

#include <ATen/cpu/Utils.h>
#include <ATen/record_function.h>
#include <fmt/format.h>
#include <torch/autograd.h>

#include <stdexcept>

#include "bitlinear/estimators.hpp"
#include "bitlinear/quant_kernels.hpp"

namespace bitqat::bitlinear {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kExactFloatK = (int64_t{1} << 24) / 128;  // |acc| <= 128 K must stay below 2^24

// The float32 CPU path with per-token scales (int8 codes): integer matmuls (at::_int_mm, int32
// sums) and the row kernels. Other inputs (float64 for gradient checks, per-tensor activation
// scales) run the composed ATen ops on the codes held in the compute dtype.
bool int8_path(const at::Tensor& codes) { return codes.scalar_type() == at::kChar; }

// acc = a b^T for int8 activation codes a [M, K] and weight codes b [N, K] in {-1, 0, 1}: int32, exact.
// - LibTorch 2.11's CPU at::_int_mm returns wrong sums for K = 1 (oneDNN's gemm is handed leading
//   dimensions taken from the strides of a size-1 dimension and rejects the call silently;
//   pytorch/pytorch#195066), so K = 1 is the broadcast product of the two columns.
// - at::_int_mm reaches oneDNN's int8 gemm only on CPUs with AVX-512 VNNI; elsewhere it runs a scalar
//   loop, 10 to 25 times slower than a float32 sgemm of the same shape (AMD EPYC with AVX2 only, one
//   thread, LibTorch 2.11, 2026-12-07, M x K x N: 3136 x 64 x 256 128 ms against 11 ms; 3136 x 64 x 192
//   76 against 3.4; 2048 x 576 x 1536 2948 against 166). There the product is taken in float32 and
//   converted: every partial sum is an integer of magnitude <= 128 K < 2^24 (callers keep K below
//   kExactFloatK), exactly representable in float32, so the result is the int32 sums whatever order
//   the sgemm adds in.
at::Tensor int8_product(const at::Tensor& a, const at::Tensor& b) {
  if (a.size(1) == 1) return a.to(at::kInt) * b.to(at::kInt).t();
  static const bool int8_gemm = at::cpu::is_avx512_vnni_supported();
  if (!int8_gemm && a.size(1) < kExactFloatK) return at::mm(a.to(at::kFloat), b.to(at::kFloat).t()).to(at::kInt);
  return at::_int_mm(a.contiguous(), b.t());
}

// The epilogue of the composed path, in the order of cuda/reference.cpp epilogue_ref: y = 0;
// y += acc_g * gamma_g for each group g in order; y / s; + bias.
at::Tensor epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, const WeightQuantSpec& spec,
                    const at::Tensor& s, const at::Tensor& bias) {
  at::Tensor y = at::zeros_like(acc[0]);
  for (size_t g = 0; g < acc.size(); ++g) {
    at::Tensor scale;
    switch (spec.granularity) {
      case Granularity::kPerTensor:
        scale = gamma.reshape({1, 1});
        break;
      case Granularity::kPerChannel:
        scale = gamma.reshape({1, -1});
        break;
      default:
        scale = gamma.select(1, static_cast<int64_t>(g)).reshape({1, -1});
        break;
    }
    y = y + acc[g] * scale;
  }
  y = y / s;
  if (bias.defined()) y = y + bias.to(y.scalar_type()).reshape({1, -1});
  return y;
}

// The integer sums acc = cx cw^T, one [M, N] matrix per weight group (one for per-tensor and
// per-channel scales): int32 from int8 codes, else exact integer values in the codes' dtype.
std::vector<at::Tensor> code_products(const at::Tensor& cx, const at::Tensor& cw, const WeightQuantSpec& wspec) {
  auto product = [&](const at::Tensor& a, const at::Tensor& b) {
    return int8_path(a) ? int8_product(a, b) : at::mm(a, b.t());
  };
  std::vector<at::Tensor> acc;
  if (wspec.granularity == Granularity::kPerGroup) {
    const int64_t k = cx.size(1), g = wspec.group_size;
    for (int64_t lo = 0; lo < k; lo += g) {
      const int64_t n = std::min(g, k - lo);
      acc.push_back(product(cx.narrow(1, lo, n), cw.narrow(1, lo, n).contiguous()));
    }
  } else {
    acc.push_back(product(cx, cw));
  }
  return acc;
}

// The epilogue of the int8 path (the row kernel): acc int32 per group, gamma float32 as quantize_weight
// returns it, s [M] float32 per token.
at::Tensor int8_epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, const WeightQuantSpec& wspec,
                         const at::Tensor& s, const at::Tensor& bias) {
  const bool grouped = wspec.granularity == Granularity::kPerGroup;
  const auto gm = wspec.granularity == Granularity::kPerTensor ? gamma.expand({acc[0].size(1)}).contiguous() : gamma;
  // acc holds this layer's own temporaries: the output may overwrite them.
  return kernels::linear_epilogue(acc, gm, grouped ? gamma.size(1) : 1, s.reshape({-1}).contiguous(), bias,
                                  /*reuse_acc=*/true);
}

// The dequantized int8 weight codes of the backward: w_deq = cw * gamma per tensor, channel or group.
at::Tensor int8_weight_deq(const at::Tensor& cw, const at::Tensor& gamma, const WeightQuantSpec& wspec) {
  const auto g = scale_grouping(wspec, cw.sizes());
  return kernels::scale_codes(cw, gamma, g.group, g.per_tensor);
}

struct QuantizedLinearFn : torch::autograd::Function<QuantizedLinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& codes, const at::Tensor& scales, WeightQuantSpec wspec,
                            ActQuantSpec aspec) {
    RECORD_FUNCTION("bitqat::quantized_linear", std::vector<c10::IValue>());
    const int64_t k = x.size(-1);
    const bool int8 = int8_path(codes);
    const auto dt = int8 ? at::kFloat : codes.scalar_type();
    const auto cx = codes.reshape({-1, k});
    if (int8 &&
        (aspec.type != ActQuant::kPerToken || scales.scalar_type() != at::kFloat || scales.numel() != cx.size(0))) {
      throw std::invalid_argument(
          fmt::format("quantized_linear: int8 codes [{}, {}] need per-token float32 scales [{}], got {} scales of {}",
                      cx.size(0), k, cx.size(0), scales.numel(), c10::toString(scales.scalar_type())));
    }
    const auto qw = quantize_weight(weight.detach(), wspec);
    const auto cw = int8 ? qw.codes : qw.codes.to(dt);
    const auto gamma = qw.scales.to(dt);
    const auto s = aspec.type == ActQuant::kPerToken ? scales.reshape({-1, 1}) : scales.reshape({1, 1});
    const auto acc = code_products(cx, cw, wspec);
    // An absent bias arrives as an empty placeholder (autograd functions take no undefined inputs).
    const bool has_bias = bias.numel() > 0;
    const auto b = has_bias ? bias.detach() : at::Tensor();
    const at::Tensor y = int8 ? int8_epilogue(acc, gamma, wspec, scales, b) : epilogue(acc, gamma, wspec, s, b);

    const at::Tensor mask_w = clipped_ste_mask(weight, qw);
    const at::Tensor mask_a = clipped_ste_mask(x.detach().reshape({-1, k}).to(dt), s, aspec);
    // The backward needs the codes and scales only: int8 activations, not a float copy.
    ctx->save_for_backward({cx, scales, cw, gamma, mask_w, mask_a});
    ctx->saved_data["wspec_gran"] = static_cast<int64_t>(wspec.granularity);
    ctx->saved_data["wspec_group"] = wspec.group_size;
    ctx->saved_data["per_token"] = aspec.type == ActQuant::kPerToken;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["has_bias"] = has_bias;
    auto shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return y.view(shape).to(x.scalar_type());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto v = ctx->get_saved_variables();
    const auto &cx = v[0], &xs = v[1], &cw = v[2], &gamma = v[3], &mask_w = v[4], &mask_a = v[5];
    WeightQuantSpec wspec;
    wspec.granularity = static_cast<Granularity>(ctx->saved_data["wspec_gran"].toInt());
    wspec.group_size = ctx->saved_data["wspec_group"].toInt();
    const bool per_token = ctx->saved_data["per_token"].toBool();
    const bool int8 = int8_path(cx);
    const auto dt = int8 ? at::kFloat : cx.scalar_type();
    const int64_t k = cx.size(1), n = cw.size(0);
    const auto g = grad_out[0].reshape({-1, n}).to(dt);
    at::Tensor w_deq, x_deq;
    if (int8) {
      w_deq = int8_weight_deq(cw, gamma, wspec);
      x_deq = kernels::dequant_rows(cx, xs.reshape({-1}).contiguous());
    } else {
      w_deq = cw * expand_scales(gamma, wspec, cw.sizes());
      x_deq = per_token ? cx / xs.reshape({-1, 1}) : cx / xs.reshape({1, 1});
    }
    auto grad_x = at::mm(g, w_deq);
    auto grad_w = at::mm(g.t(), x_deq);
    if (mask_a.defined()) grad_x = grad_x * mask_a.to(dt);
    if (mask_w.defined()) grad_w = grad_w * mask_w.to(dt);
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto grad_b = ctx->saved_data["has_bias"].toBool() ? g.sum(0) : at::Tensor();
    auto x_shape = grad_out[0].sizes().vec();
    x_shape.back() = k;
    return {grad_x.view(x_shape).to(x_dtype),
            grad_w.to(w_dtype),
            grad_b,
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

// The non-tensor arguments of QuantizedLinearsFn (one argument, so autograd counts one input for it).
struct GroupSpec {
  std::vector<WeightQuantSpec> wspecs;
  ActQuantSpec aspec;
  bool relu2 = false;
  double norm_eps = 1e-6;
};

// quantized_linears: one node for y_i = quantized_linear(n(a(x)), W_i, b_i). Inputs: x, the norm
// weight (an empty placeholder without a norm), kMaxGroup weights, kMaxGroup biases (empty
// placeholders for none and for unused slots). Fixed arity: a custom autograd function takes no
// list of tensors as a differentiable input.
constexpr size_t kMaxGroup = 3;

struct QuantizedLinearsFn : torch::autograd::Function<QuantizedLinearsFn> {
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& norm_w, const at::Tensor& w0,
                             const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& b0, const at::Tensor& b1,
                             const at::Tensor& b2, const GroupSpec& spec) {
    RECORD_FUNCTION("bitqat::quantized_linears", std::vector<c10::IValue>());
    // An output no one uses gets an undefined gradient (skipped below), not a buffer of zeros.
    ctx->set_materialize_grads(false);
    const std::vector<at::Tensor> all{w0, w1, w2};
    const std::vector<at::Tensor> weights(all.begin(), all.begin() + static_cast<int64_t>(spec.wspecs.size()));
    const std::vector<at::Tensor> biases{b0, b1, b2};
    const int64_t k = x.size(-1);
    const bool has_norm = norm_w.numel() > 0;
    const auto x2 = x.detach().reshape({-1, k}).contiguous();
    const auto in = kernels::norm_quantize_rows(x2, spec.aspec.eps, spec.aspec.bits, spec.relu2,
                                                has_norm ? norm_w.detach() : at::Tensor(), spec.norm_eps);
    tensor_list outputs,
        saved{has_norm ? x2 : at::Tensor(), has_norm ? norm_w.detach() : at::Tensor(), in.r, in.codes, in.scales};
    for (size_t i = 0; i < weights.size(); ++i) {
      const auto& wspec = spec.wspecs[i];
      const auto qw = quantize_weight(weights[i].detach(), wspec);
      const auto gamma = qw.scales.to(at::kFloat);
      const auto b = biases[i].numel() > 0 ? biases[i].detach() : at::Tensor();
      const auto y = int8_epilogue(code_products(in.codes, qw.codes, wspec), gamma, wspec, in.scales, b);
      auto shape = x.sizes().vec();
      shape.back() = weights[i].size(0);
      outputs.push_back(y.view(shape));
      saved.insert(saved.end(), {qw.codes, gamma, clipped_ste_mask(weights[i], qw)});
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["relu2"] = spec.relu2;
    std::vector<int64_t> gran, groups, has_bias, w_dtype;
    for (size_t i = 0; i < weights.size(); ++i) {
      gran.push_back(static_cast<int64_t>(spec.wspecs[i].granularity));
      groups.push_back(spec.wspecs[i].group_size);
      has_bias.push_back(biases[i].numel() > 0);
      w_dtype.push_back(static_cast<int64_t>(weights[i].scalar_type()));
    }
    ctx->saved_data["gran"] = gran;
    ctx->saved_data["group"] = groups;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["w_dtype"] = w_dtype;
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return outputs;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto v = ctx->get_saved_variables();
    const auto &x2 = v[0], &norm_w = v[1], &r = v[2], &cx = v[3], &xs = v[4];
    const auto gran = ctx->saved_data["gran"].toIntVector();
    const auto groups = ctx->saved_data["group"].toIntVector();
    const auto has_bias = ctx->saved_data["has_bias"].toIntVector();
    const auto w_dtype = ctx->saved_data["w_dtype"].toIntVector();
    const auto x_shape = ctx->saved_data["x_shape"].toIntVector();
    const size_t n = gran.size();
    // grad of the quantizer's input: sum_i g_i W_deq_i (the identity straight-through estimator),
    // accumulated in one buffer; the weight gradients share one dequantized copy of the input.
    at::Tensor gx, x_deq;
    tensor_list grad_w(n), grad_b(n);
    for (size_t i = 0; i < n; ++i) {
      if (!grad_out[i].defined()) continue;
      const auto &cw = v[5 + 3 * i], &gamma = v[6 + 3 * i], &mask_w = v[7 + 3 * i];
      WeightQuantSpec wspec;
      wspec.granularity = static_cast<Granularity>(gran[i]);
      wspec.group_size = groups[i];
      const auto g = grad_out[i].reshape({-1, cw.size(0)}).to(at::kFloat);
      const auto w_deq = int8_weight_deq(cw, gamma, wspec);
      if (gx.defined()) {
        gx.addmm_(g, w_deq);
      } else {
        gx = at::mm(g, w_deq);
      }
      if (!x_deq.defined()) x_deq = kernels::dequant_rows(cx, xs);
      auto gw = at::mm(g.t(), x_deq);
      if (mask_w.defined()) gw = gw * mask_w.to(at::kFloat);
      grad_w[i] = gw.to(static_cast<at::ScalarType>(w_dtype[i]));
      if (has_bias[i]) grad_b[i] = g.sum(0);
    }
    at::Tensor dx, dnorm;
    if (gx.defined()) {
      if (norm_w.defined()) {
        // gx is this node's own buffer: the norm's gradient overwrites it.
        std::tie(dx, dnorm) = kernels::rms_norm_backward(gx, x2, norm_w, r, ctx->saved_data["relu2"].toBool(),
                                                         /*reuse_grad=*/true);
      } else {
        dx = gx;
      }
      dx = dx.view(x_shape);
    }
    grad_w.resize(kMaxGroup);
    grad_b.resize(kMaxGroup);
    tensor_list out{dx, dnorm};
    out.insert(out.end(), grad_w.begin(), grad_w.end());
    out.insert(out.end(), grad_b.begin(), grad_b.end());
    out.emplace_back();  // spec
    return out;
  }
};

}  // namespace

bool quantized_linears_applicable(const at::Tensor& x, const InputNorm& pre, const std::vector<WeightQuantSpec>& w,
                                  const ActQuantSpec& a) {
  if (!kernels::fused_cpu(x) || a.type != ActQuant::kPerToken || a.estimator != Estimator::kIdentity) return false;
  if (pre.relu2 && !pre.weight.defined()) return false;
  if (pre.weight.defined() && (!kernels::fused_cpu(pre.weight) || pre.weight.numel() != x.size(-1))) return false;
  for (const auto& s : w) {
    if (!quantized_linear_applicable(x, s, a)) return false;
  }
  return !w.empty() && w.size() <= kMaxGroup;
}

std::vector<at::Tensor> quantized_linears(const at::Tensor& x, const InputNorm& pre,
                                          const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                                          const std::vector<WeightQuantSpec>& wspecs, const ActQuantSpec& aspec) {
  if (weights.empty() || weights.size() != biases.size() || weights.size() != wspecs.size() ||
      weights.size() > kMaxGroup) {
    throw std::invalid_argument(
        fmt::format("quantized_linears: {} weights, {} biases and {} weight specs; expected the same number, 1 to {}",
                    weights.size(), biases.size(), wspecs.size(), kMaxGroup));
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t n = weights[i].dim() == 2 ? weights[i].size(0) : -1;
    if (n < 0 || weights[i].size(1) != x.size(-1) || (biases[i].defined() && biases[i].numel() != n)) {
      throw std::invalid_argument(fmt::format(
          "quantized_linears: weight {} is {} and its bias {}; expected [N, {}] and [N]", i,
          c10::str(weights[i].sizes()), biases[i].defined() ? c10::str(biases[i].sizes()) : "none", x.size(-1)));
    }
  }
  if (!quantized_linears_applicable(x, pre, wspecs, aspec)) {
    throw std::invalid_argument(
        "quantized_linears: needs a float32 CPU input, per-token activations with the identity estimator, quantized "
        "weights, relu2 only with a norm, and a float32 norm weight of the input's width");
  }
  const auto none = at::empty({0}, x.options());
  std::vector<at::Tensor> w(kMaxGroup, none), b(kMaxGroup, none);
  for (size_t i = 0; i < weights.size(); ++i) {
    w[i] = weights[i];
    if (biases[i].defined()) b[i] = biases[i];
  }
  const auto nw = pre.weight.defined() ? pre.weight : none;
  return QuantizedLinearsFn::apply(x, nw, w[0], w[1], w[2], b[0], b[1], b[2],
                                   GroupSpec{wspecs, aspec, pre.relu2, pre.eps});
}

bool quantized_linear_applicable(const at::Tensor& x, const WeightQuantSpec& w, const ActQuantSpec& a) {
  if (w.type == WeightQuant::kNone || a.type == ActQuant::kNone || !x.device().is_cpu()) return false;
  if (w.granularity == Granularity::kPerKernel) return false;
  return x.scalar_type() == at::kDouble || x.size(-1) < kExactFloatK;
}

ActCodes quantize_input_codes(const at::Tensor& x, const ActQuantSpec& spec) {
  const int64_t k = x.size(-1);
  const auto x2 = x.detach().reshape({-1, k}).contiguous();
  if (kernels::fused_cpu(x2) && spec.type == ActQuant::kPerToken) {
    auto r = kernels::quantize_rows(x2, spec.eps, spec.bits);
    return {r.codes, r.scales};
  }
  const auto q = quantize_activation(x2, spec);
  return {q.codes.to(q.scales.scalar_type()), q.scales.reshape({-1})};
}

at::Tensor quantized_linear(const at::Tensor& x, const ActCodes& codes, const at::Tensor& weight,
                            const at::Tensor& bias, const WeightQuantSpec& wspec, const ActQuantSpec& aspec) {
  return QuantizedLinearFn::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()), codes.codes,
                                  codes.scales, wspec, aspec);
}

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const WeightQuantSpec& wspec, const ActQuantSpec& aspec) {
  return quantized_linear(x, quantize_input_codes(x, aspec), weight, bias, wspec, aspec);
}

}  // namespace bitqat::bitlinear
