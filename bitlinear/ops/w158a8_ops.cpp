#include "bitlinear/ops/w158a8_ops.hpp"

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "bitlinear/quant_kernels.hpp"
#include "cuda/dispatch.hpp"
#include "cuda/reference.hpp"

namespace bitqat::bitlinear::ops {
namespace {

std::atomic<const cuda::Plan*> g_plan_override{nullptr};

// The device's name for the dispatch table, looked up once per CUDA device.
std::string device_name(const at::Device& dev) {
  if (!dev.is_cuda()) {
    const auto* l = cpu_launchers();
    return l ? l->current_device_name() : "";
  }
  static std::mutex mu;
  static std::vector<std::string> names;
  const std::lock_guard<std::mutex> lock(mu);
  const auto i = static_cast<size_t>(dev.index() < 0 ? 0 : dev.index());
  if (names.size() <= i) names.resize(i + 1);
  if (names[i].empty()) names[i] = cuda::launchers().current_device_name();
  return names[i];
}

// Device scratch for a plan (empty when it needs none).
at::Tensor workspace_for(const cuda::Plan& plan, int64_t m, const PackedTernary& w, at::Device dev) {
  const size_t bytes = cuda::workspace_bytes(plan, m, w.n, w.k, w.kind, w.expanded.defined());
  return bytes ? at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().device(dev).dtype(at::kByte))
               : at::Tensor();
}

// The int8 expansion of the weights when the plan reads it, made once per PackedTernary.
void expand_if_needed(const cuda::Plan& plan, const PackedTernary& w, const Route& r) {
  if (w.expanded.defined() && w.expanded.device() != w.packed.device()) w.expanded.reset();  // moved since
  if (plan.kernel != cuda::Kernel::kCublasInt8 || w.expanded.defined()) return;
  auto e = at::empty({w.n, cuda::padded_k(w.k)}, w.packed.options().dtype(at::kChar));
  r.kernels->expand_packed(reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), w.n, w.k,
                           e.data_ptr<int8_t>(), r.stream);
  w.expanded = e;
}

int64_t stride_for(const PackedTernary& w) {
  if (w.kind == cuda::ScaleKind::kPerTensor) return 0;
  return w.kind == cuda::ScaleKind::kPerChannel ? 1 : cuda::scale_groups(w.k, w.group);
}

// Every operand of a packed matmul, with the values found: a wrong device, dtype, shape or layout
// must fail here with a clear message, never reach a kernel as a bad pointer.
void check_operands(const char* what, const QuantizedTokens& x, const PackedTernary& w) {
  TORCH_CHECK(x.q.defined() && x.scales.defined(), what, ": the quantized activations are empty");
  TORCH_CHECK(w.packed.defined() && w.scales.defined(), what, ": the packed weight is empty");
  TORCH_CHECK(x.k >= 1 && w.k >= 1 && w.n >= 1, what, ": K and N must be >= 1, got activations K = ", x.k,
              ", weight N = ", w.n, ", K = ", w.k);
  TORCH_CHECK(x.k == w.k, what, ": activations have K = ", x.k, ", the packed weight has K = ", w.k);
  const auto dev = x.q.device();
  TORCH_CHECK(x.scales.device() == dev && w.packed.device() == dev && w.scales.device() == dev, what,
              ": operands on different devices: codes ", dev, ", activation scales ", x.scales.device(),
              ", packed weight ", w.packed.device(), ", weight scales ", w.scales.device());
  TORCH_CHECK(x.q.scalar_type() == at::kChar, what, ": activation codes must be int8, got ", x.q.scalar_type());
  TORCH_CHECK(x.q.dim() == 2 && x.q.size(1) == cuda::padded_k(x.k), what, ": activation codes must be [M, ",
              cuda::padded_k(x.k), "] (K = ", x.k, " padded to ", cuda::kBlockK, "), got ", x.q.sizes());
  TORCH_CHECK(x.scales.scalar_type() == at::kFloat, what, ": activation scales must be float32, got ",
              x.scales.scalar_type());
  TORCH_CHECK(x.scales.numel() == x.q.size(0), what, ": ", x.scales.numel(), " activation scales for M = ", x.q.size(0),
              " tokens");
  TORCH_CHECK(w.packed.scalar_type() == at::kInt, what, ": packed weight must be int32 words, got ",
              w.packed.scalar_type());
  TORCH_CHECK(w.packed.dim() == 2 && w.packed.size(0) == w.n && w.packed.size(1) == cuda::words_per_row(w.k), what,
              ": packed weight must be [", w.n, ", ", cuda::words_per_row(w.k), "] words for N = ", w.n, ", K = ", w.k,
              ", got ", w.packed.sizes());
  TORCH_CHECK(w.scales.scalar_type() == at::kFloat, what, ": weight scales must be float32, got ",
              w.scales.scalar_type());
  TORCH_CHECK(w.kind == cuda::ScaleKind::kPerTensor || w.kind == cuda::ScaleKind::kPerChannel ||
                  w.kind == cuda::ScaleKind::kPerGroup,
              what, ": unknown scale kind ", static_cast<int>(w.kind));
  TORCH_CHECK(w.kind != cuda::ScaleKind::kPerGroup || (w.group > 0 && w.group % cuda::kGroupAlign == 0), what,
              ": group size must be a positive multiple of ", cuda::kGroupAlign, ", got ", w.group);
  const int64_t want = w.kind == cuda::ScaleKind::kPerTensor    ? 1
                       : w.kind == cuda::ScaleKind::kPerChannel ? w.n
                                                                : w.n * cuda::scale_groups(w.k, w.group);
  TORCH_CHECK(w.scales.numel() == want, what, ": ", w.scales.numel(), " weight scales, expected ", want, " (N = ", w.n,
              ", K = ", w.k, ", group ", w.group, ")");
  TORCH_CHECK(x.q.is_contiguous() && x.scales.is_contiguous() && w.packed.is_contiguous() && w.scales.is_contiguous(),
              what, ": operands must be contiguous (codes ", x.q.is_contiguous(), ", activation scales ",
              x.scales.is_contiguous(), ", packed ", w.packed.is_contiguous(), ", weight scales ",
              w.scales.is_contiguous(), ")");
  if (uses_kernels(dev)) {
    for (const auto* t : {&x.q, &w.packed}) {  // read in 16-byte loads
      TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, what,
                  ": codes and packed words must start 16-byte aligned for the kernels (a view at an offset "
                  "is not)");
    }
  }
}

void check_out(const char* what, const at::Tensor& out, int64_t m, int64_t n, at::Device dev,
               std::initializer_list<at::ScalarType> dtypes) {
  TORCH_CHECK(out.defined(), what, ": the output tensor is undefined");
  bool ok = false;
  for (auto d : dtypes) ok = ok || out.scalar_type() == d;
  TORCH_CHECK(ok, what, ": output dtype ", out.scalar_type(), " is not accepted here");
  TORCH_CHECK(out.device() == dev, what, ": output on ", out.device(), ", operands on ", dev);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == m && out.size(1) == n && out.is_contiguous(), what,
              ": output must be a contiguous [", m, ", ", n, "], got ", out.sizes(),
              out.is_contiguous() ? "" : " (not contiguous)");
}

}  // namespace

void set_plan_override(const cuda::Plan* plan) { g_plan_override.store(plan); }

cuda::Plan plan_for(const at::Device& device, int64_t m, const PackedTernary& w) {
  if (const auto* o = g_plan_override.load()) {
    if (!*cuda::plan_refusal(*o, m, w.k, w.kind) && (o->kernel != cuda::Kernel::kGemvFused || m == 1)) return *o;
  }
  return cuda::choose_plan(device_name(device), m, w.n, w.k, w.kind);
}

cuda::ScaleKind scale_kind(Granularity g) {
  switch (g) {
    case Granularity::kPerTensor:
      return cuda::ScaleKind::kPerTensor;
    case Granularity::kPerChannel:
      return cuda::ScaleKind::kPerChannel;
    case Granularity::kPerGroup:
      return cuda::ScaleKind::kPerGroup;
    case Granularity::kPerKernel:
      break;
  }
  TORCH_CHECK(false, "W1.58A8 ops: per_kernel scales are for convolutions; use per_tensor, per_channel or per_group");
}

QuantizedTokens quantize_activations_int8(const at::Tensor& x_in, const at::Tensor& norm_weight, double norm_eps,
                                          double eps) {
  TORCH_CHECK(x_in.dim() == 2, "quantize_activations_int8: expected x [M, K], got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
              "quantize_activations_int8: x must be float32 or bfloat16, got ", x_in.scalar_type());
  const int64_t k = x_in.size(1);
  TORCH_CHECK(!norm_weight.defined() || norm_weight.numel() == k, "quantize_activations_int8: norm weight has ",
              norm_weight.numel(), " entries, K = ", k);
  QuantizedTokens out;
  out.k = k;
  if (x_in.is_cuda() || cpu_launchers()) {
    const Route r(x_in);
    const auto x = x_in.contiguous();
    const auto nw = norm_weight.defined() ? norm_weight.detach().to(x.device(), at::kFloat).contiguous() : at::Tensor();
    const int64_t m = x.size(0);
    out.q = at::empty({m, cuda::padded_k(k)}, x.options().dtype(at::kChar));
    out.scales = at::empty({m}, x.options().dtype(at::kFloat));
    if (m > 0) {
      r.kernels->quantize_activations(
          x.data_ptr(), x.scalar_type() == at::kFloat ? cuda::DType::kF32 : cuda::DType::kBF16, m, k,
          static_cast<float>(eps), nw.defined() ? nw.data_ptr<float>() : nullptr, static_cast<float>(norm_eps),
          out.q.data_ptr<int8_t>(), out.scales.data_ptr<float>(), r.stream);
    }
    return out;
  }
  // The same function as the fake-quant path's activation codes (bitlinear/quant_kernels.hpp).
  auto r =
      kernels::quantize_rows(x_in.scalar_type() == at::kFloat ? x_in.contiguous() : x_in.to(at::kFloat).contiguous(),
                             eps, 8, cuda::padded_k(k), norm_weight, norm_eps);
  out.q = r.codes;
  out.scales = r.scales.to(at::kFloat);
  return out;
}

PackedTernary pack_ternary(const at::Tensor& w_in, Granularity granularity, int64_t group, double eps) {
  TORCH_CHECK(w_in.dim() == 2, "pack_ternary: expected w [N, K], got ", w_in.sizes());
  const auto kind = scale_kind(granularity);
  TORCH_CHECK(kind != cuda::ScaleKind::kPerGroup || (group > 0 && group % cuda::kGroupAlign == 0),
              "pack_ternary: group size must be a positive multiple of ", cuda::kGroupAlign, ", got ", group);
  const auto w = w_in.detach().to(at::kFloat).contiguous();
  if (w.is_cuda() || cpu_launchers()) {
    const Route r(w);
    PackedTernary p;
    p.kind = kind;
    p.n = w.size(0);
    p.k = w.size(1);
    p.group = kind == cuda::ScaleKind::kPerGroup ? group : p.k;
    TORCH_CHECK(p.n >= 1 && p.k >= 1, "pack_ternary: the weight [", p.n, ", ", p.k, "] is empty");
    const int64_t nscales = kind == cuda::ScaleKind::kPerTensor    ? 1
                            : kind == cuda::ScaleKind::kPerChannel ? p.n
                                                                   : p.n * cuda::scale_groups(p.k, group);
    p.scales = at::empty({nscales}, w.options());
    if (kind == cuda::ScaleKind::kPerGroup) p.scales = p.scales.view({p.n, cuda::scale_groups(p.k, group)});
    p.packed = at::empty({p.n, cuda::words_per_row(p.k)}, w.options().dtype(at::kInt));
    auto codes = at::empty({p.n, p.k}, w.options().dtype(at::kChar));
    auto workspace = at::empty({2 * p.n}, w.options().dtype(at::kDouble));
    r.kernels->quantize_pack_ternary(w.data_ptr<float>(), p.n, p.k, kind, group, static_cast<float>(eps),
                                     p.scales.data_ptr<float>(), codes.data_ptr<int8_t>(), workspace.data_ptr<double>(),
                                     reinterpret_cast<uint32_t*>(p.packed.data_ptr<int32_t>()), r.stream);
    return p;
  }
  // The same codes and scales as quantize_weight (bitlinear/quant_kernels.hpp).
  const auto c = kernels::weight_codes(w, kind == cuda::ScaleKind::kPerGroup ? group : w.size(1),
                                       kind == cuda::ScaleKind::kPerTensor, /*binary=*/false, eps);
  const auto scales = kind == cuda::ScaleKind::kPerChannel ? c.gamma.reshape({w.size(0)}) : c.gamma;
  return pack_codes(c.codes, scales, granularity, group);
}

PackedTernary pack_codes(const at::Tensor& codes_in, const at::Tensor& scales, Granularity granularity, int64_t group) {
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.scalar_type() == at::kChar, "pack_codes: expected int8 codes [N, K]");
  const auto codes = codes_in.contiguous();
  PackedTernary p;
  p.kind = scale_kind(granularity);
  p.n = codes.size(0);
  p.k = codes.size(1);
  p.group = p.kind == cuda::ScaleKind::kPerGroup ? group : p.k;
  TORCH_CHECK(p.kind != cuda::ScaleKind::kPerGroup || (group > 0 && group % cuda::kGroupAlign == 0),
              "pack_codes: group size must be a positive multiple of ", cuda::kGroupAlign, ", got ", group);
  p.packed = at::empty({p.n, cuda::words_per_row(p.k)}, codes.options().dtype(at::kInt));
  if (codes.is_cuda() || cpu_launchers()) {
    const Route r(codes);
    if (p.n > 0) {
      r.kernels->pack_codes(codes.data_ptr<int8_t>(), p.n, p.k,
                            reinterpret_cast<uint32_t*>(p.packed.data_ptr<int32_t>()), r.stream);
    }
  } else {
    cuda::pack_ternary_ref(codes.data_ptr<int8_t>(), p.n, p.k,
                           reinterpret_cast<uint32_t*>(p.packed.data_ptr<int32_t>()));
  }
  p.scales = scales.to(codes.device(), at::kFloat).contiguous();
  return p;
}

at::Tensor unpack_codes(const PackedTernary& p) {
  const auto packed = p.packed.cpu().contiguous();
  auto codes = at::empty({p.n, p.k}, at::kChar);
  cuda::unpack_ternary_ref(reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>()), p.n, p.k,
                           codes.data_ptr<int8_t>());
  return codes.to(p.packed.device());
}

at::Tensor w158a8_matmul(const QuantizedTokens& x, const PackedTernary& w, const at::Tensor& bias,
                         at::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16,
              "w158a8_matmul: output must be float32 or bfloat16, got ", out_dtype);
  check_operands("w158a8_matmul", x, w);
  auto y = at::empty({x.q.size(0), w.n}, x.q.options().dtype(out_dtype));
  w158a8_matmul_out(x, w, bias, y);
  return y;
}

void w158a8_matmul_out(const QuantizedTokens& x, const PackedTernary& w, const at::Tensor& bias, at::Tensor& y) {
  check_operands("w158a8_matmul", x, w);
  const int64_t m = x.q.size(0);
  check_out("w158a8_matmul", y, m, w.n, x.q.device(), {at::kFloat, at::kBFloat16});
  at::Tensor b;
  if (bias.defined()) {
    TORCH_CHECK(bias.numel() == w.n, "w158a8_matmul: bias has ", bias.numel(), " entries, N = ", w.n);
    b = bias.detach().to(x.q.device(), at::kFloat).contiguous();
  }
  if (m == 0) return;  // no tokens: nothing to launch
  if (uses_kernels(x.q.device())) {
    const Route r(x.q);
    const auto plan = plan_for(x.q.device(), m, w);
    expand_if_needed(plan, w, r);
    auto ws = workspace_for(plan, m, w, x.q.device());
    r.kernels->w158a8_matmul_plan(plan, x.q.data_ptr<int8_t>(), x.scales.data_ptr<float>(), m,
                                  reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()),
                                  w.expanded.defined() ? w.expanded.data_ptr<int8_t>() : nullptr,
                                  w.scales.data_ptr<float>(), w.kind, w.group, w.n, w.k,
                                  b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr(),
                                  y.scalar_type() == at::kFloat ? cuda::DType::kF32 : cuda::DType::kBF16,
                                  ws.defined() ? ws.data_ptr() : nullptr, ws.defined() ? ws.numel() : 0, r.stream);
    return;
  }
  const int64_t groups = w.kind == cuda::ScaleKind::kPerGroup ? cuda::scale_groups(w.k, w.group) : 1;
  auto yi = at::empty({m, w.n, groups}, at::kInt);
  cuda::int_matmul_ref(x.q.data_ptr<int8_t>(), x.q.size(1),
                       reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), m, w.n, w.k, groups, w.group,
                       yi.data_ptr<int32_t>());
  auto yf = at::empty({m, w.n}, at::kFloat);
  cuda::epilogue_ref(yi.data_ptr<int32_t>(), m, w.n, groups, w.scales.data_ptr<float>(), stride_for(w),
                     x.scales.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, yf.data_ptr<float>());
  y.copy_(yf);
}

at::Tensor w158a8_matmul_int32(const QuantizedTokens& x, const PackedTernary& w, at::Tensor out) {
  check_operands("w158a8_matmul_int32", x, w);
  const int64_t m = x.q.size(0);
  auto y = out.defined() ? out : at::empty({m, w.n}, x.q.options().dtype(at::kInt));
  check_out("w158a8_matmul_int32", y, m, w.n, x.q.device(), {at::kInt});
  if (m == 0) return y;
  if (uses_kernels(x.q.device())) {
    const Route r(x.q);
    const auto plan = plan_for(x.q.device(), m, w);
    expand_if_needed(plan, w, r);
    auto ws = workspace_for(plan, m, w, x.q.device());
    r.kernels->w158a8_matmul_int32_plan(
        plan, x.q.data_ptr<int8_t>(), m, reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()),
        w.expanded.defined() ? w.expanded.data_ptr<int8_t>() : nullptr, w.n, w.k, y.data_ptr<int32_t>(),
        ws.defined() ? ws.data_ptr() : nullptr, ws.defined() ? ws.numel() : 0, r.stream);
  } else {
    cuda::int_matmul_ref(x.q.data_ptr<int8_t>(), x.q.size(1),
                         reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), m, w.n, w.k, 1, w.k,
                         y.data_ptr<int32_t>());
  }
  return y;
}

at::Tensor w158a8_linear(const at::Tensor& x, const at::Tensor& norm_weight, double norm_eps, double eps,
                         const PackedTernary& w, const at::Tensor& bias, at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() == 2, "w158a8_linear: expected x [M, K], got ", x.sizes());
  if (x.size(0) == 1 && uses_kernels(x.device()) && x.device() == w.packed.device() &&
      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16)) {
    const auto plan = plan_for(x.device(), 1, w);
    if (plan.kernel == cuda::Kernel::kGemvFused) {
      TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16,
                  "w158a8_linear: output must be float32 or bfloat16, got ", out_dtype);
      TORCH_CHECK(x.size(1) == w.k, "w158a8_linear: x has K = ", x.size(1), ", the packed weight has K = ", w.k);
      TORCH_CHECK(!norm_weight.defined() || norm_weight.numel() == w.k, "w158a8_linear: norm weight has ",
                  norm_weight.numel(), " entries, K = ", w.k);
      QuantizedTokens shape_only;  // the operand checks of the matmul, on a one-token stand-in
      shape_only.k = w.k;
      shape_only.q = at::empty({1, cuda::padded_k(w.k)}, x.options().dtype(at::kChar));
      shape_only.scales = at::empty({1}, x.options().dtype(at::kFloat));
      check_operands("w158a8_linear", shape_only, w);
      const Route r(x);
      const auto xc = x.contiguous();
      const auto nw =
          norm_weight.defined() ? norm_weight.detach().to(x.device(), at::kFloat).contiguous() : at::Tensor();
      at::Tensor b;
      if (bias.defined()) {
        TORCH_CHECK(bias.numel() == w.n, "w158a8_linear: bias has ", bias.numel(), " entries, N = ", w.n);
        b = bias.detach().to(x.device(), at::kFloat).contiguous();
      }
      auto y = at::empty({1, w.n}, x.options().dtype(out_dtype));
      auto ws = workspace_for(plan, 1, w, x.device());
      r.kernels->w158a8_linear_m1(
          xc.data_ptr(), xc.scalar_type() == at::kFloat ? cuda::DType::kF32 : cuda::DType::kBF16, w.k,
          static_cast<float>(eps), nw.defined() ? nw.data_ptr<float>() : nullptr, static_cast<float>(norm_eps),
          reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), w.scales.data_ptr<float>(), w.kind, w.group,
          w.n, b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr(),
          out_dtype == at::kFloat ? cuda::DType::kF32 : cuda::DType::kBF16, plan.splits,
          ws.defined() ? ws.data_ptr() : nullptr, ws.defined() ? ws.numel() : 0, r.stream);
      return y;
    }
  }
  const auto xq = quantize_activations_int8(x, norm_weight, norm_eps, eps);
  return w158a8_matmul(xq, w, bias, out_dtype);
}

}  // namespace bitqat::bitlinear::ops
