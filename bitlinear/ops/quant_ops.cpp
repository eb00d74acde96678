#include "bitlinear/ops/quant_ops.hpp"

#include <tuple>
#include <utility>

#include "bitlinear/ops/route.hpp"
#include "cuda/quant.hpp"
#include "cuda/quant_codes.hpp"

namespace bitqat::bitlinear::ops {
namespace {

using kernels::RowCodes;
using kernels::WeightCodes;

bool serves(const at::Tensor& t) {
  if (t.is_cuda()) return true;
  // The CPU route takes the kernels' own dtypes; double tensors keep bitlinear's double loops.
  return t.device().is_cpu() && cpu_launchers() != nullptr &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
}

// x as the row kernels read it: bf16 as it is, anything else as contiguous float32.
at::Tensor kernel_rows(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? x.contiguous() : x.to(at::kFloat).contiguous();
}

cuda::DType dtype_of(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? cuda::DType::kBF16 : cuda::DType::kF32;
}

// A weight or norm vector as float32 on x's device (nullptr data when undefined).
at::Tensor vector_on(const at::Tensor& v, const at::Tensor& x) {
  return v.defined() ? v.detach().to(x.device(), at::kFloat).contiguous() : at::Tensor();
}
const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

RowCodes quantize_rows(const at::Tensor& x2d, double eps, int bits, int64_t ldq, const at::Tensor& norm_weight,
                       double norm_eps) {
  const Route r(x2d);
  const auto x = kernel_rows(x2d);
  const auto nw = vector_on(norm_weight, x);
  const int64_t m = x.size(0), k = x.size(1);
  RowCodes out;
  out.codes = at::empty({m, ldq}, x.options().dtype(at::kChar));
  out.scales = at::empty({m}, x.options().dtype(at::kFloat));
  r.kernels->quantize_rows(x.data_ptr(), dtype_of(x), m, k, ldq, static_cast<float>(eps), cuda::act_qmax(bits),
                           data_or_null(nw), norm_eps, out.codes.data_ptr<int8_t>(), out.scales.data_ptr<float>(),
                           r.stream);
  return out;
}

RowCodes quantize_tensor(const at::Tensor& x_in, double eps, int bits) {
  const Route r(x_in);
  const auto x = x_in.to(at::kFloat).contiguous();
  RowCodes out;
  out.codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
  out.scales = at::empty({1}, x.options());
  r.kernels->quantize_tensor(x.data_ptr<float>(), x.numel(), static_cast<float>(eps), cuda::act_qmax(bits),
                             out.codes.data_ptr<int8_t>(), out.scales.data_ptr<float>(), r.stream);
  return out;
}

std::pair<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x2d, const at::Tensor& w, double eps) {
  const Route r(x2d);
  const auto x = kernel_rows(x2d);
  const auto wf = vector_on(w, x);
  const int64_t m = x.size(0), k = x.size(1);
  auto y = at::empty({m, k}, x.options().dtype(at::kFloat));
  auto rr = at::empty({m}, x.options().dtype(at::kFloat));
  r.kernels->rms_norm_rows(x.data_ptr(), dtype_of(x), m, k, data_or_null(wf), eps, y.data_ptr<float>(),
                           rr.data_ptr<float>(), r.stream);
  return {y, rr};
}

// gamma (and, for binary codes, mean) of w [rows, cols] float32: [1] per tensor, else [rows, groups].
std::pair<at::Tensor, at::Tensor> weight_scales(const Route& r, const at::Tensor& w, int64_t group, bool per_tensor,
                                                bool with_mean) {
  const int64_t rows = w.size(0), cols = w.size(1);
  auto gamma =
      per_tensor ? at::empty({1}, w.options()) : at::empty({rows, cuda::scale_groups(cols, group)}, w.options());
  auto mean = with_mean ? at::empty_like(gamma) : at::Tensor();
  auto workspace = per_tensor ? at::empty({2 * rows}, w.options().dtype(at::kDouble)) : at::Tensor();
  r.kernels->weight_scales(w.data_ptr<float>(), rows, cols, group, per_tensor, gamma.data_ptr<float>(),
                           with_mean ? mean.data_ptr<float>() : nullptr,
                           per_tensor ? workspace.data_ptr<double>() : nullptr, r.stream);
  return {gamma, mean};
}

WeightCodes weight_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, bool binary, double eps) {
  const Route r(w2d);
  const auto w = w2d.to(at::kFloat).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  WeightCodes out;
  std::tie(out.gamma, out.mean) = weight_scales(r, w, group, per_tensor, binary);
  out.codes = at::empty({rows, cols}, w.options().dtype(at::kChar));
  r.kernels->weight_codes(w.data_ptr<float>(), rows, cols, group, per_tensor ? 0 : out.gamma.size(1),
                          out.gamma.data_ptr<float>(), binary ? out.mean.data_ptr<float>() : nullptr,
                          static_cast<float>(eps), out.codes.data_ptr<int8_t>(), r.stream);
  return out;
}

std::pair<at::Tensor, at::Tensor> act_fake_quant(const at::Tensor& x, double eps, int bits, double lambda) {
  const Route r(x);
  const int64_t m = x.size(0), k = x.size(1);
  auto out = at::empty({m, k}, x.options());
  auto s = at::empty({m}, x.options());
  r.kernels->act_fake_quant(x.data_ptr<float>(), m, k, static_cast<float>(eps), cuda::act_qmax(bits),
                            static_cast<float>(lambda), out.data_ptr<float>(), s.data_ptr<float>(), r.stream);
  return {out, s};
}

at::Tensor act_ste_backward(const at::Tensor& g2d, const at::Tensor& x, const at::Tensor& scales, int bits, double clip,
                            double lambda) {
  // The identity estimator passes g itself, as the CPU loop does; the kernel computes the clipped one.
  if (clip < 0.0) return g2d.clone(at::MemoryFormat::Contiguous);
  const Route r(x);
  const int64_t m = x.size(0), k = x.size(1);
  const auto g = g2d.contiguous();
  auto dx = at::empty({m, k}, x.options());
  r.kernels->act_ste_backward(g.data_ptr<float>(), x.data_ptr<float>(), scales.data_ptr<float>(), m, k,
                              cuda::act_qmax(bits), static_cast<float>(clip), static_cast<float>(lambda),
                              dx.data_ptr<float>(), r.stream);
  return dx;
}

std::pair<at::Tensor, at::Tensor> ternary_fake_quant(const at::Tensor& w, int64_t group, bool per_tensor, double eps,
                                                     double lambda) {
  const Route r(w);
  const int64_t rows = w.size(0), cols = w.size(1);
  const auto gamma = weight_scales(r, w, group, per_tensor, /*with_mean=*/false).first;
  auto out = at::empty({rows, cols}, w.options());
  r.kernels->ternary_fake_quant(w.data_ptr<float>(), rows, cols, group, per_tensor ? 0 : gamma.size(1),
                                gamma.data_ptr<float>(), static_cast<float>(eps), static_cast<float>(lambda),
                                out.data_ptr<float>(), r.stream);
  return {out, gamma};
}

constexpr kernels::DeviceKernels kDeviceKernels = {serves,       quantize_rows,  quantize_tensor,  rms_norm,
                                                   weight_codes, act_fake_quant, act_ste_backward, ternary_fake_quant};

}  // namespace

const kernels::DeviceKernels& device_quant_kernels() { return kDeviceKernels; }

}  // namespace bitqat::bitlinear::ops

// Registers the table when the program starts. Nothing references this file otherwise, so the
// library's CMakeLists asks the linker to keep it (--undefined of this symbol) in every program that
// links the op layer. The table is a constant and bitlinear's slot a constant-initialised atomic, so
// the order of static initialisation does not matter.
extern "C" {
extern const bool bitqat_bitlinear_ops_register_quant_kernels;
const bool bitqat_bitlinear_ops_register_quant_kernels =
    (bitqat::bitlinear::kernels::register_device_kernels(&bitqat::bitlinear::ops::device_quant_kernels()), true);
}
