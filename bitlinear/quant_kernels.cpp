#include "bitlinear/quant_kernels.hpp"

#include <ATen/Parallel.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "cuda/quant.hpp"
#include "cuda/quant_codes.hpp"

namespace bitqat::bitlinear::kernels {
namespace {

// Rows per parallel chunk: about 16k elements each, so that small tensors stay on one thread.
int64_t grain(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(cols, 1)); }

void check_2d(const at::Tensor& t, const char* what) {
  if (t.dim() != 2 || !t.is_contiguous()) {
    throw std::invalid_argument(fmt::format("{}: expected a contiguous 2-D tensor, got shape [{}]{}", what,
                                            fmt::join(t.sizes(), ", "), t.is_contiguous() ? "" : " (strided)"));
  }
}

void check_bits(int bits) {
  if (bits < 2 || bits > 8) throw std::invalid_argument(fmt::format("activation bits must be in [2, 8], got {}", bits));
}

cuda::DType cuda_dtype(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return cuda::DType::kF32;
  if (t.scalar_type() == at::kBFloat16) return cuda::DType::kBF16;
  throw std::invalid_argument(
      fmt::format("CUDA quantization kernels take float32 or bfloat16, got {}", c10::toString(t.scalar_type())));
}

}  // namespace

at::ScalarType compute_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

RowCodes quantize_rows(const at::Tensor& x2d, double eps, int bits, int64_t ldq, const at::Tensor& norm_weight,
                       double norm_eps) {
  check_2d(x2d, "quantize_rows");
  check_bits(bits);
  const int64_t m = x2d.size(0), k = x2d.size(1);
  if (ldq < 0) ldq = k;
  if (ldq < k) throw std::invalid_argument(fmt::format("quantize_rows: ldq = {} < K = {}", ldq, k));
  if (norm_weight.defined() && norm_weight.numel() != k) {
    throw std::invalid_argument(
        fmt::format("quantize_rows: the norm weight has {} entries, K = {}", norm_weight.numel(), k));
  }
  const int qmax = cuda::act_qmax(bits);
  RowCodes out;
  if (x2d.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x2d.device());
    const auto x = x2d.scalar_type() == at::kBFloat16 ? x2d : x2d.to(at::kFloat).contiguous();
    const auto nw = norm_weight.defined() ? norm_weight.to(x.device(), at::kFloat).contiguous() : at::Tensor();
    out.codes = at::empty({m, ldq}, x.options().dtype(at::kChar));
    out.scales = at::empty({m}, x.options().dtype(at::kFloat));
    cuda::quantize_rows(x.data_ptr(), cuda_dtype(x), m, k, ldq, static_cast<float>(eps), qmax,
                        nw.defined() ? nw.data_ptr<float>() : nullptr, norm_eps, out.codes.data_ptr<int8_t>(),
                        out.scales.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
    return out;
  }
  const auto x = x2d.to(compute_dtype(x2d)).contiguous();
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
  check_bits(bits);
  const int qmax = cuda::act_qmax(bits);
  RowCodes out;
  if (x_in.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const auto x = x_in.to(at::kFloat).contiguous();
    out.codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
    out.scales = at::empty({1}, x.options());
    cuda::quantize_tensor(x.data_ptr<float>(), x.numel(), static_cast<float>(eps), qmax, out.codes.data_ptr<int8_t>(),
                          out.scales.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
    return out;
  }
  const auto x = x_in.to(compute_dtype(x_in)).contiguous();
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
  check_2d(x2d, "rms_norm");
  const int64_t m = x2d.size(0), k = x2d.size(1);
  if (w.defined() && w.numel() != k) {
    throw std::invalid_argument(fmt::format("rms_norm: the weight has {} entries, K = {}", w.numel(), k));
  }
  if (x2d.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x2d.device());
    const auto x = x2d.scalar_type() == at::kBFloat16 ? x2d : x2d.to(at::kFloat).contiguous();
    const auto wf = w.defined() ? w.to(x.device(), at::kFloat).contiguous() : at::Tensor();
    auto y = at::empty({m, k}, x.options().dtype(at::kFloat));
    auto r = at::empty({m}, x.options().dtype(at::kFloat));
    cuda::rms_norm_rows(x.data_ptr(), cuda_dtype(x), m, k, wf.defined() ? wf.data_ptr<float>() : nullptr, eps,
                        y.data_ptr<float>(), r.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
    return {y, r};
  }
  const auto x = x2d.to(compute_dtype(x2d)).contiguous();
  auto y = at::empty({m, k}, x.options());
  auto r = at::empty({m}, x.options());
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

WeightCodes weight_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, bool binary, double eps) {
  check_2d(w2d, "weight_codes");
  const int64_t rows = w2d.size(0), cols = w2d.size(1);
  if (rows < 1 || cols < 1) {
    throw std::invalid_argument(fmt::format("weight_codes: the weight [{}, {}] is empty", rows, cols));
  }
  if (per_tensor) group = cols;
  if (group < 1) throw std::invalid_argument(fmt::format("weight_codes: group size must be >= 1, got {}", group));
  const int64_t groups = per_tensor ? 1 : (cols + group - 1) / group;
  const int64_t stride = per_tensor ? 0 : groups;
  WeightCodes out;
  if (w2d.is_cuda()) {
    const c10::cuda::CUDAGuard guard(w2d.device());
    const auto w = w2d.to(at::kFloat).contiguous();
    const auto stream = at::cuda::getCurrentCUDAStream();
    out.gamma = per_tensor ? at::empty({1}, w.options()) : at::empty({rows, groups}, w.options());
    if (binary) out.mean = at::empty_like(out.gamma);
    auto ws = per_tensor ? at::empty({2 * rows}, w.options().dtype(at::kDouble)) : at::Tensor();
    cuda::weight_scales(w.data_ptr<float>(), rows, cols, group, per_tensor, out.gamma.data_ptr<float>(),
                        binary ? out.mean.data_ptr<float>() : nullptr, ws.defined() ? ws.data_ptr<double>() : nullptr,
                        stream);
    out.codes = at::empty({rows, cols}, w.options().dtype(at::kChar));
    cuda::weight_codes(w.data_ptr<float>(), rows, cols, group, stride, out.gamma.data_ptr<float>(),
                       binary ? out.mean.data_ptr<float>() : nullptr, static_cast<float>(eps),
                       out.codes.data_ptr<int8_t>(), stream);
    return out;
  }
  const auto w = w2d.to(compute_dtype(w2d)).contiguous();
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

}  // namespace bitqat::bitlinear::kernels
