#include "bitlinear/ops/w158a8_ops.hpp"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "bitlinear/quant_kernels.hpp"
#include "cuda/quant.hpp"
#include "cuda/reference.hpp"
#include "cuda/w158a8.hpp"

namespace bitqat::bitlinear::ops {
namespace {

int64_t stride_for(const PackedTernary& w) {
  if (w.kind == cuda::ScaleKind::kPerTensor) return 0;
  return w.kind == cuda::ScaleKind::kPerChannel ? 1 : cuda::scale_groups(w.k, w.group);
}

void check_pair(const QuantizedTokens& x, const PackedTernary& w) {
  TORCH_CHECK(x.k == w.k, "w158a8_matmul: activations have K = ", x.k, ", the packed weight has K = ", w.k);
  TORCH_CHECK(x.q.device() == w.packed.device(), "w158a8_matmul: activations on ", x.q.device(), ", weights on ",
              w.packed.device());
  TORCH_CHECK(x.q.is_contiguous() && w.packed.is_contiguous(), "w158a8_matmul: inputs must be contiguous");
}

}  // namespace

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
  // The same function as the fake-quant path's activation codes (bitlinear/quant_kernels.hpp).
  auto r = kernels::quantize_rows(
      x_in.scalar_type() == at::kFloat || x_in.is_cuda() ? x_in.contiguous() : x_in.to(at::kFloat).contiguous(), eps, 8,
      cuda::padded_k(k), norm_weight, norm_eps);
  QuantizedTokens out;
  out.k = k;
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
  if (codes.is_cuda()) {
    const c10::cuda::CUDAGuard guard(codes.device());
    cuda::pack_codes(codes.data_ptr<int8_t>(), p.n, p.k, reinterpret_cast<uint32_t*>(p.packed.data_ptr<int32_t>()),
                     at::cuda::getCurrentCUDAStream());
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
  check_pair(x, w);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16,
              "w158a8_matmul: output must be float32 or bfloat16");
  const int64_t m = x.q.size(0);
  at::Tensor b;
  if (bias.defined()) {
    TORCH_CHECK(bias.numel() == w.n, "w158a8_matmul: bias has ", bias.numel(), " entries, N = ", w.n);
    b = bias.detach().to(x.q.device(), at::kFloat).contiguous();
  }
  if (x.q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.q.device());
    auto y = at::empty({m, w.n}, x.q.options().dtype(out_dtype));
    cuda::w158a8_matmul(x.q.data_ptr<int8_t>(), x.scales.data_ptr<float>(), m,
                        reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), w.scales.data_ptr<float>(),
                        w.kind, w.group, w.n, w.k, b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr(),
                        out_dtype == at::kFloat ? cuda::DType::kF32 : cuda::DType::kBF16,
                        at::cuda::getCurrentCUDAStream());
    return y;
  }
  const int64_t groups = w.kind == cuda::ScaleKind::kPerGroup ? cuda::scale_groups(w.k, w.group) : 1;
  auto yi = at::empty({m, w.n, groups}, at::kInt);
  cuda::int_matmul_ref(x.q.data_ptr<int8_t>(), x.q.size(1),
                       reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), m, w.n, w.k, groups, w.group,
                       yi.data_ptr<int32_t>());
  auto y = at::empty({m, w.n}, at::kFloat);
  cuda::epilogue_ref(yi.data_ptr<int32_t>(), m, w.n, groups, w.scales.data_ptr<float>(), stride_for(w),
                     x.scales.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>());
  return y.to(out_dtype);
}

at::Tensor w158a8_matmul_int32(const QuantizedTokens& x, const PackedTernary& w) {
  check_pair(x, w);
  const int64_t m = x.q.size(0);
  auto y = at::empty({m, w.n}, x.q.options().dtype(at::kInt));
  if (x.q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.q.device());
    cuda::w158a8_matmul_int32(x.q.data_ptr<int8_t>(), m,
                              reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), w.n, w.k,
                              y.data_ptr<int32_t>(), at::cuda::getCurrentCUDAStream());
  } else {
    cuda::int_matmul_ref(x.q.data_ptr<int8_t>(), x.q.size(1),
                         reinterpret_cast<const uint32_t*>(w.packed.data_ptr<int32_t>()), m, w.n, w.k, 1, w.k,
                         y.data_ptr<int32_t>());
  }
  return y;
}

}  // namespace bitqat::bitlinear::ops
