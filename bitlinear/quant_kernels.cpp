#include "bitlinear/quant_kernels.hpp"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "bitlinear/absmean.hpp"
#include "bitlinear/cpu/row_kernels.hpp"
#include "cuda/quant_codes.hpp"

namespace bitqat::bitlinear::kernels {
namespace {

std::atomic<const DeviceKernels*> g_device_kernels{nullptr};

// Rows per parallel chunk: about 16k elements each, so that small tensors stay on one thread.
int64_t grain(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(cols, 1)); }

// ---- operand checks, shared by the CPU loops and the device kernels ------------------------------

void check_defined(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), fn, ": ", name, " is an undefined tensor");
}

// A 2-D tensor, read in place (contiguous) unless `strided_ok`.
void check_matrix(const char* fn, const char* name, const at::Tensor& t, bool strided_ok = false) {
  check_defined(fn, name, t);
  TORCH_CHECK(t.dim() == 2 && (strided_ok || t.is_contiguous()), fn, ": ", name, " must be a ",
              strided_ok ? "" : "contiguous ", "2-D tensor, got shape ", t.sizes(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

// "float32", "int8", ...: the dtype as Python prints it.
std::string dtype_name(at::ScalarType t) { return c10::getDtypeNames(t).first; }

void check_floating(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), fn, ": ", name, " must be a floating-point tensor, got ",
              dtype_name(t.scalar_type()));
}

void check_dtype(const char* fn, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, fn, ": ", name, " must be ", dtype_name(want), ", got ",
              dtype_name(t.scalar_type()));
}

void check_same_device(const char* fn, const char* name, const at::Tensor& t, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, fn, ": ", name, " is on ", t.device(), ", the other operands on ", dev);
}

// A vector of n entries (any shape with n elements), or undefined when optional.
void check_entries(const char* fn, const char* name, const at::Tensor& t, int64_t n, bool optional) {
  if (optional && !t.defined()) return;
  check_defined(fn, name, t);
  TORCH_CHECK(t.numel() == n, fn, ": ", name, " has ", t.numel(), " entries, expected ", n, " (shape ", t.sizes(), ")");
}

void check_bits(const char* fn, int bits) {
  TORCH_CHECK(bits >= 2 && bits <= 8, fn, ": activation bits must be in [2, 8], got ", bits);
}

void check_group(const char* fn, int64_t group, bool per_tensor) {
  TORCH_CHECK(per_tensor || group >= 1, fn, ": group size must be >= 1, got ", group);
}

// A weight w [rows, cols] (contiguous, not empty) in groups of `group` columns, or per tensor: the
// group size the kernels take (cols per tensor).
int64_t check_weight_groups(const char* fn, const at::Tensor& w2d, int64_t group, bool per_tensor) {
  check_matrix(fn, "w", w2d);
  TORCH_CHECK(w2d.size(0) >= 1 && w2d.size(1) >= 1, fn, ": the weight ", w2d.sizes(), " is empty");
  check_group(fn, group, per_tensor);
  return per_tensor ? w2d.size(1) : group;
}

// The passes without device kernels read every operand on the CPU.
void check_cpu(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be on the CPU (this pass has no device kernel), got ",
              t.device());
}

// The device kernels that serve `t`, or nullptr for the CPU loops. A CUDA tensor without them, or a
// tensor on another device, is an error.
const DeviceKernels* device_for(const char* fn, const at::Tensor& t) {
  const DeviceKernels* d = g_device_kernels.load();
  if (t.is_cuda()) {
    TORCH_CHECK(d != nullptr, fn,
                ": CUDA tensors run on the op layer's device kernels, which this program does not link (link "
                "bitqat_bitlinear_ops)");
    return d;
  }
  TORCH_CHECK(t.device().is_cpu(), fn, ": expected a CPU or CUDA tensor, got one on ", t.device());
  return d != nullptr && d->serves(t) ? d : nullptr;
}

// The float32 CPU row pass (RowKernels::act_quant_rows) shared by quantize_rows and
// norm_quantize_rows: codes [M, ldq] and scales of x [M, K] (contiguous float32), after relu^2 and / or
// the norm when asked, and the norm's r [M] when with_r (undefined otherwise).
std::pair<RowCodes, at::Tensor> act_quant_cpu(const at::Tensor& x, int64_t ldq, double eps, int qmax, bool relu2,
                                              const at::Tensor& norm_weight, double norm_eps, bool with_r) {
  const int64_t m = x.size(0), k = x.size(1);
  const auto nw = norm_weight.defined() ? norm_weight.to(at::kCPU, at::kFloat).contiguous() : at::Tensor();
  RowCodes out;
  out.codes = at::empty({m, ldq}, x.options().dtype(at::kChar));
  out.scales = at::empty({m}, x.options());
  const auto r = with_r && nw.defined() ? at::empty({m}, x.options()) : at::Tensor();
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    rk.act_quant_rows(x.data_ptr<float>(), k, ldq, static_cast<float>(eps), qmax, relu2,
                      nw.defined() ? nw.data_ptr<float>() : nullptr, norm_eps, out.codes.data_ptr<int8_t>(), nullptr,
                      out.scales.data_ptr<float>(), r.defined() ? r.data_ptr<float>() : nullptr, begin, end);
  });
  return {out, r};
}

}  // namespace

at::ScalarType compute_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void register_device_kernels(const DeviceKernels* kernels) { g_device_kernels.store(kernels); }
const DeviceKernels* device_kernels() { return g_device_kernels.load(); }

RowCodes quantize_rows(const at::Tensor& x2d, double eps, int bits, int64_t ldq, const at::Tensor& norm_weight,
                       double norm_eps) {
  RECORD_FUNCTION("bitqat::quantize_rows", std::vector<c10::IValue>());
  constexpr const char* fn = "quantize_rows";
  check_matrix(fn, "x", x2d);
  check_floating(fn, "x", x2d);
  check_bits(fn, bits);
  const int64_t m = x2d.size(0), k = x2d.size(1);
  if (ldq < 0) ldq = k;
  TORCH_CHECK(ldq >= k, fn, ": ldq = ", ldq, " is below K = ", k);
  check_entries(fn, "norm_weight", norm_weight, k, /*optional=*/true);
  if (norm_weight.defined()) check_floating(fn, "norm_weight", norm_weight);
  if (const auto* d = device_for(fn, x2d)) return d->quantize_rows(x2d, eps, bits, ldq, norm_weight, norm_eps);
  const int qmax = cuda::act_qmax(bits);
  const auto x = x2d.to(compute_dtype(x2d)).contiguous();
  if (x.scalar_type() == at::kFloat) {
    return act_quant_cpu(x, ldq, eps, qmax, /*relu2=*/false, norm_weight, norm_eps, /*with_r=*/false).first;
  }
  RowCodes out;
  out.codes = at::empty({m, ldq}, x.options().dtype(at::kChar));
  out.scales = at::empty({m}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quantize_rows", [&] {
    const auto* px = x.data_ptr<scalar_t>();
    const auto nw = norm_weight.defined() ? norm_weight.to(at::kCPU, x.scalar_type()).contiguous() : at::Tensor();
    const scalar_t* pw = nw.defined() ? nw.data_ptr<scalar_t>() : nullptr;
    auto* pq = out.codes.data_ptr<int8_t>();
    auto* ps = out.scales.data_ptr<scalar_t>();
    const auto e = static_cast<scalar_t>(eps);
    at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row(pw ? static_cast<size_t>(k) : 0);
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* xr = px + i * k;
        if (pw) {
          cuda::rms_norm_row(xr, k, pw, norm_eps, row.data());
          xr = row.data();
        }
        ps[i] = cuda::act_quant_row(xr, k, ldq, e, qmax, pq + i * ldq);
      }
    });
  });
  return out;
}

RowCodes quantize_tensor(const at::Tensor& x_in, double eps, int bits) {
  RECORD_FUNCTION("bitqat::quantize_tensor", std::vector<c10::IValue>());
  constexpr const char* fn = "quantize_tensor";
  check_defined(fn, "x", x_in);
  check_floating(fn, "x", x_in);
  check_bits(fn, bits);
  if (const auto* d = device_for(fn, x_in)) return d->quantize_tensor(x_in, eps, bits);
  const int qmax = cuda::act_qmax(bits);
  const auto x = x_in.to(compute_dtype(x_in)).contiguous();
  RowCodes out;
  out.codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
  out.scales = at::empty({1}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "quantize_tensor", [&] {
    const auto* px = x.data_ptr<scalar_t>();
    const int64_t n = x.numel();
    scalar_t amax = 0;
    const bool finite = cuda::absmax(px, n, &amax);
    const scalar_t s = cuda::act_scale(amax, static_cast<scalar_t>(eps), qmax, finite);
    out.scales.data_ptr<scalar_t>()[0] = s;
    auto* pq = out.codes.data_ptr<int8_t>();
    at::parallel_for(0, n, int64_t{1} << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pq[i] = cuda::act_code(px[i], s, qmax);
    });
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x2d, const at::Tensor& w, double eps) {
  RECORD_FUNCTION("bitqat::rms_norm", std::vector<c10::IValue>());
  constexpr const char* fn = "rms_norm";
  check_matrix(fn, "x", x2d);
  check_floating(fn, "x", x2d);
  const int64_t m = x2d.size(0), k = x2d.size(1);
  check_entries(fn, "weight", w, k, /*optional=*/true);
  if (w.defined()) check_floating(fn, "weight", w);
  if (const auto* d = device_for(fn, x2d)) return d->rms_norm(x2d, w, eps);
  const auto x = x2d.to(compute_dtype(x2d)).contiguous();
  auto y = at::empty({m, k}, x.options());
  auto r = at::empty({m}, x.options());
  if (x.scalar_type() == at::kFloat) {
    const auto wc = w.defined() ? w.to(at::kCPU, at::kFloat).contiguous() : at::Tensor();
    const auto& rk = cpu::row_kernels();
    at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
      rk.rms_norm(x.data_ptr<float>(), k, wc.defined() ? wc.data_ptr<float>() : nullptr, eps, y.data_ptr<float>(),
                  r.data_ptr<float>(), begin, end);
    });
    return {y, r};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm", [&] {
    const auto wc = w.defined() ? w.to(at::kCPU, x.scalar_type()).contiguous() : at::Tensor();
    const scalar_t* pw = wc.defined() ? wc.data_ptr<scalar_t>() : nullptr;
    const auto* px = x.data_ptr<scalar_t>();
    auto* py = y.data_ptr<scalar_t>();
    auto* pr = r.data_ptr<scalar_t>();
    at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pr[i] = cuda::rms_norm_row(px + i * k, k, pw, eps, py + i * k);
    });
  });
  return {y, r};
}

namespace {

// gamma of a float32 weight [rows, cols] from the row kernels' canonical sums.
at::Tensor ternary_gamma(const at::Tensor& w, int64_t group, bool per_tensor) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t groups = per_tensor ? 1 : cuda::scale_groups(cols, group);
  auto sums = at::empty({rows, groups}, w.options().dtype(at::kDouble));
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    rk.abs_sums(w.data_ptr<float>(), cols, per_tensor ? cols : group, sums.data_ptr<double>(), begin, end);
  });
  const auto* ps = sums.data_ptr<double>();
  if (per_tensor) return at::full({1}, absmean_of_rows(ps, rows, cols), w.options());
  auto gamma = at::empty({rows, groups}, w.options());
  auto* pg = gamma.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      pg[r * groups + g] = absmean_of_group(ps[r * groups + g], std::min(group, cols - g * group));
    }
  }
  return gamma;
}

}  // namespace

at::Tensor run_abs_sums(const at::Tensor& w, int64_t len) {
  constexpr const char* fn = "run_abs_sums";
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.is_contiguous(), fn,
              ": w must be a contiguous float32 CPU tensor, got ", w.scalar_type(), " on ", w.device());
  TORCH_CHECK(len >= 1 && w.numel() % len == 0, fn, ": len must be >= 1 and divide the ", w.numel(),
              " elements of w, got ", len);
  const int64_t runs = w.numel() / len;
  auto out = at::empty({runs}, w.options().dtype(at::kDouble));
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, runs, grain(len), [&](int64_t begin, int64_t end) {
    rk.abs_sums(w.data_ptr<float>(), len, len, out.data_ptr<double>(), begin, end);
  });
  return out;
}

float absmean_of_rows(const double* row_sums, int64_t rows, int64_t cols) {
  const double total = cuda::canonical_sum(rows, [&](int64_t r) { return row_sums[r]; });
  return static_cast<float>(total / (static_cast<double>(rows) * static_cast<double>(cols)));
}

WeightCodes weight_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, bool binary, double eps) {
  RECORD_FUNCTION("bitqat::weight_codes", std::vector<c10::IValue>());
  constexpr const char* fn = "weight_codes";
  group = check_weight_groups(fn, w2d, group, per_tensor);
  check_floating(fn, "w", w2d);
  if (const auto* d = device_for(fn, w2d)) return d->weight_codes(w2d, group, per_tensor, binary, eps);
  const int64_t rows = w2d.size(0), cols = w2d.size(1);
  const int64_t groups = per_tensor ? 1 : cuda::scale_groups(cols, group);
  const int64_t stride = per_tensor ? 0 : groups;
  const auto w = w2d.to(compute_dtype(w2d)).contiguous();
  if (w.scalar_type() == at::kFloat && !binary) {
    WeightCodes out;
    out.gamma = ternary_gamma(w, group, per_tensor);
    out.codes = at::empty({rows, cols}, w.options().dtype(at::kChar));
    const auto& rk = cpu::row_kernels();
    at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
      rk.ternary_rows(w.data_ptr<float>(), cols, group, stride, out.gamma.data_ptr<float>(), static_cast<float>(eps),
                      out.codes.data_ptr<int8_t>(), nullptr, 1.0f, nullptr, begin, end);
    });
    return out;
  }
  WeightCodes out;
  out.gamma = per_tensor ? at::empty({1}, w.options()) : at::empty({rows, groups}, w.options());
  if (binary) out.mean = at::empty_like(out.gamma);
  out.codes = at::empty({rows, cols}, w.options().dtype(at::kChar));
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "weight_codes", [&] {
    const auto* pw = w.data_ptr<scalar_t>();
    auto* pg = out.gamma.data_ptr<scalar_t>();
    auto* pm = binary ? out.mean.data_ptr<scalar_t>() : nullptr;
    if (per_tensor) {
      // The canonical sum over rows of each row's canonical sum (cuda/quant_codes.hpp).
      std::vector<double> row_abs(static_cast<size_t>(rows)), row_sum(binary ? static_cast<size_t>(rows) : 0);
      at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          row_abs[static_cast<size_t>(r)] = cuda::abs_sum(pw + r * cols, cols);
          if (binary) row_sum[static_cast<size_t>(r)] = cuda::plain_sum(pw + r * cols, cols);
        }
      });
      const double count = static_cast<double>(rows) * static_cast<double>(cols);
      pg[0] = static_cast<scalar_t>(
          cuda::canonical_sum(rows, [&](int64_t r) { return row_abs[static_cast<size_t>(r)]; }) / count);
      if (binary) {
        pm[0] = static_cast<scalar_t>(
            cuda::canonical_sum(rows, [&](int64_t r) { return row_sum[static_cast<size_t>(r)]; }) / count);
      }
    } else {
      at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t lo = g * group, n = std::min(cols, lo + group) - lo;
            pg[r * groups + g] = static_cast<scalar_t>(cuda::abs_sum(pw + r * cols + lo, n) / static_cast<double>(n));
            if (binary) {
              pm[r * groups + g] =
                  static_cast<scalar_t>(cuda::plain_sum(pw + r * cols + lo, n) / static_cast<double>(n));
            }
          }
        }
      });
    }
    auto* pc = out.codes.data_ptr<int8_t>();
    const auto e = static_cast<scalar_t>(eps);
    at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t s = r * stride + (stride > 0 ? c / group : 0);
          const scalar_t v = pw[r * cols + c];
          pc[r * cols + c] = binary ? cuda::binary_code(v, pm[s]) : cuda::ternary_code(v, pg[s], e);
        }
      }
    });
  });
  return out;
}

WeightCodes ternary_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps) {
  return weight_codes(w2d, group, per_tensor, /*binary=*/false, eps);
}

WeightCodes binary_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps) {
  return weight_codes(w2d, group, per_tensor, /*binary=*/true, eps);
}

at::Tensor scale_codes(const at::Tensor& codes, const at::Tensor& gamma, int64_t group, bool per_tensor) {
  RECORD_FUNCTION("bitqat::scale_codes", std::vector<c10::IValue>());
  constexpr const char* fn = "scale_codes";
  check_matrix(fn, "codes", codes);
  check_dtype(fn, "codes", codes, at::kChar);
  check_group(fn, group, per_tensor);
  const int64_t rows = codes.size(0), cols = codes.size(1);
  if (per_tensor) group = cols;
  const int64_t groups = per_tensor ? 1 : cuda::scale_groups(cols, group);
  check_entries(fn, "gamma", gamma, per_tensor ? 1 : rows * groups, /*optional=*/false);
  check_floating(fn, "gamma", gamma);
  check_same_device(fn, "gamma", gamma, codes.device());
  if (!fused_cpu(gamma)) {  // one product per value in ATen: any dtype and device
    const auto scale =
        per_tensor ? gamma.reshape({}) : gamma.reshape({rows, groups}).repeat_interleave(group, 1).narrow(1, 0, cols);
    return codes.to(gamma.scalar_type()) * scale;
  }
  const auto gm = gamma.contiguous();
  auto out = at::empty({rows, cols}, gm.options());
  const auto& rk = cpu::row_kernels();
  const int64_t stride = per_tensor ? 0 : groups;
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    rk.scale_codes(codes.data_ptr<int8_t>(), cols, group, stride, gm.data_ptr<float>(), out.data_ptr<float>(), begin,
                   end);
  });
  return out;
}

bool fused_cpu(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

bool fused_fake_quant(const at::Tensor& t) {
  return (t.device().is_cpu() || t.is_cuda()) && t.scalar_type() == at::kFloat;
}

std::pair<at::Tensor, at::Tensor> act_fake_quant(const at::Tensor& x2d, double eps, int bits, double lambda) {
  RECORD_FUNCTION("bitqat::act_fake_quant", std::vector<c10::IValue>());
  constexpr const char* fn = "act_fake_quant";
  check_matrix(fn, "x", x2d);
  check_dtype(fn, "x", x2d, at::kFloat);
  check_bits(fn, bits);
  if (const auto* d = device_for(fn, x2d)) return d->act_fake_quant(x2d, eps, bits, lambda);
  const int64_t m = x2d.size(0), k = x2d.size(1);
  auto out = at::empty({m, k}, x2d.options());
  auto s = at::empty({m}, x2d.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    rk.act_fake_quant_rows(x2d.data_ptr<float>(), k, static_cast<float>(eps), cuda::act_qmax(bits),
                           static_cast<float>(lambda), out.data_ptr<float>(), s.data_ptr<float>(), begin, end);
  });
  return {out, s};
}

at::Tensor act_ste_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& scales, int bits,
                            double clip, double lambda) {
  RECORD_FUNCTION("bitqat::act_ste_backward", std::vector<c10::IValue>());
  constexpr const char* fn = "act_ste_backward";
  check_matrix(fn, "x", x2d);
  check_dtype(fn, "x", x2d, at::kFloat);
  check_matrix(fn, "g", g2d, /*strided_ok=*/true);
  check_dtype(fn, "g", g2d, at::kFloat);
  TORCH_CHECK(g2d.sizes() == x2d.sizes(), fn, ": g is ", g2d.sizes(), ", x is ", x2d.sizes());
  check_entries(fn, "scales", scales, x2d.size(0), /*optional=*/false);
  check_dtype(fn, "scales", scales, at::kFloat);
  TORCH_CHECK(scales.is_contiguous(), fn, ": scales must be contiguous, got strides ", scales.strides());
  check_same_device(fn, "g", g2d, x2d.device());
  check_same_device(fn, "scales", scales, x2d.device());
  check_bits(fn, bits);
  if (const auto* d = device_for(fn, x2d)) return d->act_ste_backward(g2d, x2d, scales, bits, clip, lambda);
  const int64_t m = x2d.size(0), k = x2d.size(1);
  const auto g = g2d.contiguous();
  auto dx = at::empty({m, k}, x2d.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    rk.act_ste_backward(g.data_ptr<float>(), x2d.data_ptr<float>(), scales.data_ptr<float>(), k, cuda::act_qmax(bits),
                        static_cast<float>(clip), static_cast<float>(lambda), dx.data_ptr<float>(), begin, end);
  });
  return dx;
}

std::pair<at::Tensor, at::Tensor> ternary_fake_quant(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps,
                                                     double lambda) {
  RECORD_FUNCTION("bitqat::ternary_fake_quant", std::vector<c10::IValue>());
  constexpr const char* fn = "ternary_fake_quant";
  group = check_weight_groups(fn, w2d, group, per_tensor);
  check_dtype(fn, "w", w2d, at::kFloat);
  if (const auto* d = device_for(fn, w2d)) return d->ternary_fake_quant(w2d, group, per_tensor, eps, lambda);
  const int64_t rows = w2d.size(0), cols = w2d.size(1);
  const int64_t stride = per_tensor ? 0 : cuda::scale_groups(cols, group);
  auto gamma = ternary_gamma(w2d, group, per_tensor);
  auto out = at::empty({rows, cols}, w2d.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    rk.ternary_rows(w2d.data_ptr<float>(), cols, group, stride, gamma.data_ptr<float>(), static_cast<float>(eps),
                    nullptr, nullptr, static_cast<float>(lambda), out.data_ptr<float>(), begin, end);
  });
  return {out, gamma};
}

at::Tensor dequant_rows(const at::Tensor& codes, const at::Tensor& scales) {
  RECORD_FUNCTION("bitqat::dequant_rows", std::vector<c10::IValue>());
  constexpr const char* fn = "dequant_rows";
  check_matrix(fn, "codes", codes);
  check_dtype(fn, "codes", codes, at::kChar);
  check_cpu(fn, "codes", codes);
  const int64_t m = codes.size(0), k = codes.size(1);
  check_entries(fn, "scales", scales, m, /*optional=*/false);
  check_dtype(fn, "scales", scales, at::kFloat);
  check_cpu(fn, "scales", scales);
  TORCH_CHECK(scales.is_contiguous(), fn, ": scales must be contiguous, got strides ", scales.strides());
  auto out = at::empty({m, k}, scales.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    rk.dequant_rows(codes.data_ptr<int8_t>(), k, scales.data_ptr<float>(), out.data_ptr<float>(), begin, end);
  });
  return out;
}

at::Tensor linear_epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, int64_t gstride,
                           const at::Tensor& scales, const at::Tensor& bias, bool reuse_acc) {
  RECORD_FUNCTION("bitqat::linear_epilogue", std::vector<c10::IValue>());
  constexpr const char* fn = "linear_epilogue";
  TORCH_CHECK(!acc.empty(), fn, ": no integer sums");
  for (const auto& a : acc) {
    check_matrix(fn, "acc", a, /*strided_ok=*/true);
    check_dtype(fn, "acc", a, at::kInt);
    check_cpu(fn, "acc", a);
    TORCH_CHECK(a.sizes() == acc[0].sizes(), fn, ": the sums of the groups differ in shape: ", a.sizes(), " and ",
                acc[0].sizes());
  }
  TORCH_CHECK(gstride >= static_cast<int64_t>(acc.size()), fn, ": gstride = ", gstride, " is below the ", acc.size(),
              " groups");
  check_entries(fn, "gamma", gamma, acc[0].size(1) * gstride, /*optional=*/false);
  check_dtype(fn, "gamma", gamma, at::kFloat);
  check_cpu(fn, "gamma", gamma);
  check_entries(fn, "scales", scales, acc[0].size(0), /*optional=*/false);
  check_dtype(fn, "scales", scales, at::kFloat);
  check_cpu(fn, "scales", scales);
  TORCH_CHECK(scales.is_contiguous(), fn, ": scales must be contiguous, got strides ", scales.strides());
  check_entries(fn, "bias", bias, acc[0].size(1), /*optional=*/true);
  if (bias.defined()) check_cpu(fn, "bias", bias);
  const int64_t m = acc[0].size(0), n = acc[0].size(1);
  std::vector<at::Tensor> accs;
  std::vector<const int32_t*> ptrs;
  for (const auto& a : acc) {
    accs.push_back(a.contiguous());
    ptrs.push_back(accs.back().data_ptr<int32_t>());
  }
  const auto gm = gamma.contiguous();
  const auto b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  // One group handed over: the float output overwrites the int32 sums (the same 4 bytes an element).
  // (A plain tensor on the same storage, not a view: autograd treats views of intermediates specially.)
  auto y = reuse_acc && accs.size() == 1 && gstride == 1 && accs[0].is_same(acc[0]) && accs[0].storage_offset() == 0
               ? at::empty({0}, gm.options()).set_(accs[0].storage(), 0, {m, n}, {n, 1})
               : at::empty({m, n}, gm.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
    rk.linear_epilogue(ptrs.data(), static_cast<int64_t>(ptrs.size()), n, gm.data_ptr<float>(), gstride,
                       scales.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                       begin, end);
  });
  return y;
}

NormCodes norm_quantize_rows(const at::Tensor& x2d, double eps, int bits, bool relu2, const at::Tensor& norm_weight,
                             double norm_eps) {
  RECORD_FUNCTION("bitqat::norm_quantize_rows", std::vector<c10::IValue>());
  constexpr const char* fn = "norm_quantize_rows";
  check_matrix(fn, "x", x2d);
  check_dtype(fn, "x", x2d, at::kFloat);
  check_cpu(fn, "x", x2d);
  check_bits(fn, bits);
  const int64_t k = x2d.size(1);
  check_entries(fn, "norm_weight", norm_weight, k, /*optional=*/true);
  if (norm_weight.defined()) check_floating(fn, "norm_weight", norm_weight);
  auto [codes, r] = act_quant_cpu(x2d, k, eps, cuda::act_qmax(bits), relu2, norm_weight, norm_eps, /*with_r=*/true);
  return {codes.codes, codes.scales, r};
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& w,
                                                    const at::Tensor& r, bool relu2, bool reuse_grad) {
  RECORD_FUNCTION("bitqat::rms_norm_backward", std::vector<c10::IValue>());
  constexpr const char* fn = "rms_norm_backward";
  check_matrix(fn, "x", x2d, /*strided_ok=*/true);
  check_dtype(fn, "x", x2d, at::kFloat);
  check_cpu(fn, "x", x2d);
  check_matrix(fn, "g", g2d, /*strided_ok=*/true);
  check_dtype(fn, "g", g2d, at::kFloat);
  check_cpu(fn, "g", g2d);
  TORCH_CHECK(g2d.sizes() == x2d.sizes(), fn, ": g is ", g2d.sizes(), ", x is ", x2d.sizes());
  const int64_t m = x2d.size(0), k = x2d.size(1);
  check_entries(fn, "w", w, k, /*optional=*/true);
  if (w.defined()) {
    check_floating(fn, "w", w);
    check_cpu(fn, "w", w);
  }
  check_entries(fn, "r", r, m, /*optional=*/false);
  check_dtype(fn, "r", r, at::kFloat);
  check_cpu(fn, "r", r);
  TORCH_CHECK(r.is_contiguous(), fn, ": r must be contiguous, got strides ", r.strides());
  const auto g = g2d.contiguous();
  const auto x = x2d.contiguous();
  const auto wc = w.defined() ? w.to(at::kFloat).contiguous() : at::Tensor();
  // In g's buffer when the caller hands it over (a fresh multi-megabyte output costs page faults and
  // cache misses inside a training step).
  auto dx = reuse_grad && g.is_same(g2d) ? g : at::empty({m, k}, x.options());
  // dw: per-chunk partial sums in a fixed chunking of the rows, added in chunk order (deterministic
  // for any thread count).
  const int64_t chunk = std::max<int64_t>(grain(k), 64);
  const int64_t chunks = (m + chunk - 1) / chunk;
  auto partial = at::zeros({std::max<int64_t>(chunks, 1), k}, x.options());
  const auto& rk = cpu::row_kernels();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      rk.rms_norm_backward(g.data_ptr<float>(), x.data_ptr<float>(), wc.defined() ? wc.data_ptr<float>() : nullptr,
                           r.data_ptr<float>(), k, relu2, dx.data_ptr<float>(), partial.data_ptr<float>() + c * k,
                           c * chunk, std::min(m, (c + 1) * chunk));
    }
  });
  return {dx, partial.sum(0)};
}

}  // namespace bitqat::bitlinear::kernels
