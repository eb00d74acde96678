// Quantization kernels (launchers in cuda/quant.hpp). Each follows cuda/quant_codes.hpp exactly:
// kReduceLanes threads per reduction, thread l summing elements l, l + kReduceLanes, ... in order,
// then the halving tree (shared memory down to 32 lanes, warp shuffles below). Built with
// --fmad=false so that no product and sum are contracted into an FMA the CPU would not do.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/block_reduce.cuh"
#include "cuda/check.hpp"
#include "cuda/launch.hpp"
#include "cuda/quant.hpp"
#include "cuda/quant_codes.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace {

using reduce::block_absmax;
using reduce::canonical_block_sum;
using reduce::kLanes;
using reduce::to_float;

// One block per row.
template <typename T>
__global__ void __launch_bounds__(kLanes)
    rms_norm_kernel(const T* __restrict__ x, int64_t k, const float* __restrict__ w, double eps, float* __restrict__ y,
                    float* __restrict__ r_out) {
  __shared__ double smem[kLanes];
  const T* xr = x + blockIdx.x * k;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const double v = to_float(xr[j]);
    acc += v * v;
  }
  const float r = rms_inverse<float>(canonical_block_sum(acc, smem), k, eps);
  float* yr = y + blockIdx.x * k;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const float v = to_float(xr[j]);
    yr[j] = w ? rms_apply(v, r, w[j]) : v * r;
  }
  if (r_out && threadIdx.x == 0) r_out[blockIdx.x] = r;
}

// One block per token row: the optional fused RMSNorm, the absmax, the codes.
template <typename T>
__global__ void __launch_bounds__(kLanes)
    quantize_rows_kernel(const T* __restrict__ x, int64_t k, int64_t ldq, float eps, int qmax,
                         const float* __restrict__ nw, double norm_eps, int8_t* __restrict__ q,
                         float* __restrict__ scales) {
  __shared__ double smem[kLanes];
  __shared__ float fsmem[kLanes / 32];
  __shared__ int bad;
  const T* xr = x + blockIdx.x * k;
  float r = 1.0f;
  if (nw) {
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < k; j += kLanes) {
      const double v = to_float(xr[j]);
      acc += v * v;
    }
    r = rms_inverse<float>(canonical_block_sum(acc, smem), k, norm_eps);
  }
  float amax = 0.0f;
  bool finite = true;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const float v = to_float(xr[j]);
    const float h = nw ? rms_apply(v, r, nw[j]) : v;
    const float a = fabsf(h);
    finite = finite && isfinite(a);
    amax = fmaxf(amax, a);
  }
  const float m = block_absmax(amax, finite, fsmem, &bad);
  const float s = act_scale(m, eps, qmax, isfinite(m));
  int8_t* qr = q + blockIdx.x * ldq;
  for (int64_t j = threadIdx.x; j < ldq; j += kLanes) {
    int8_t c = 0;
    if (j < k) {
      const float v = to_float(xr[j]);
      c = act_code(nw ? rms_apply(v, r, nw[j]) : v, s, qmax);
    }
    qr[j] = c;
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
}

// One block: the absmax of the whole tensor, then the scale.
__global__ void __launch_bounds__(kLanes)
    tensor_scale_kernel(const float* __restrict__ x, int64_t n, float eps, int qmax, float* __restrict__ scale) {
  __shared__ float fsmem[kLanes / 32];
  __shared__ int bad;
  float amax = 0.0f;
  bool finite = true;
  for (int64_t j = threadIdx.x; j < n; j += kLanes) {
    const float a = fabsf(x[j]);
    finite = finite && isfinite(a);
    amax = fmaxf(amax, a);
  }
  const float m = block_absmax(amax, finite, fsmem, &bad);
  if (threadIdx.x == 0) scale[0] = act_scale(m, eps, qmax, isfinite(m));
}

__global__ void tensor_codes_kernel(const float* __restrict__ x, int64_t n, const float* __restrict__ scale, int qmax,
                                    int8_t* __restrict__ q) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) q[i] = act_code(x[i], scale[0], qmax);
}

// grid (rows, groups): canonical sums of |w| (and w) over one group of one row. raw: write the sums
// (double, per tensor) instead of the means.
__global__ void __launch_bounds__(kLanes)
    group_sums_kernel(const float* __restrict__ w, int64_t cols, int64_t group, bool want_mean, bool raw,
                      float* __restrict__ gamma, float* __restrict__ mean, double* __restrict__ raw_abs,
                      double* __restrict__ raw_sum) {
  __shared__ double smem[kLanes];
  const int64_t row = blockIdx.x, g = blockIdx.y, groups = gridDim.y;
  const int64_t lo = g * group, n = min(cols, lo + group) - lo;
  const float* p = w + row * cols + lo;
  double a = 0.0, s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += kLanes) {
    a += static_cast<double>(fabsf(p[j]));
    s += static_cast<double>(p[j]);
  }
  const double abs_total = canonical_block_sum(a, smem);
  const double total = want_mean ? canonical_block_sum(s, smem) : 0.0;
  if (threadIdx.x == 0) {
    if (raw) {
      raw_abs[row] = abs_total;
      if (want_mean) raw_sum[row] = total;
    } else {
      gamma[row * groups + g] = static_cast<float>(abs_total / static_cast<double>(n));
      if (want_mean) mean[row * groups + g] = static_cast<float>(total / static_cast<double>(n));
    }
  }
}

// One block: the canonical sum over rows of the per-row sums, divided by the element count.
__global__ void __launch_bounds__(kLanes)
    tensor_mean_kernel(const double* __restrict__ row_abs, const double* __restrict__ row_sum, int64_t rows,
                       double count, float* __restrict__ gamma, float* __restrict__ mean) {
  __shared__ double smem[kLanes];
  double a = 0.0, s = 0.0;
  for (int64_t i = threadIdx.x; i < rows; i += kLanes) {
    a += row_abs[i];
    if (mean) s += row_sum[i];
  }
  const double abs_total = canonical_block_sum(a, smem);
  const double total = mean ? canonical_block_sum(s, smem) : 0.0;
  if (threadIdx.x == 0) {
    gamma[0] = static_cast<float>(abs_total / count);
    if (mean) mean[0] = static_cast<float>(total / count);
  }
}

__global__ void weight_codes_kernel(const float* __restrict__ w, int64_t rows, int64_t cols, int64_t group,
                                    int64_t stride, const float* __restrict__ gamma, const float* __restrict__ mean,
                                    float eps, int8_t* __restrict__ codes) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const int64_t s = r * stride + (stride > 0 ? c / group : 0);
  codes[i] = mean ? binary_code(w[i], mean[s]) : ternary_code(w[i], gamma[s], eps);
}

// One thread per packed word.
__global__ void pack_codes_kernel(const int8_t* __restrict__ codes, int64_t n, int64_t k, int64_t wpr,
                                  uint32_t* __restrict__ packed) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * wpr) return;
  const int64_t row = idx / wpr, wi = idx % wpr;
  uint32_t word = 0;
  for (int t = 0; t < kCodesPerWord; ++t) {
    const int64_t j = wi * kCodesPerWord + t;
    const uint32_t c = j < k ? static_cast<uint32_t>(codes[row * k + j] + 1) : 1u;
    word |= c << code_shift(t);
  }
  packed[idx] = word;
}

// One block per row: per-token absmax fake quantization blended with lambda, the CPU row kernel's
// arithmetic (bitlinear/cpu/row_kernels_impl.hpp act_fake_quant_rows): d = code / s,
// out = lambda == 1 ? d : lambda == 0 ? x : x + lambda * (d - x); a row holding NaN or infinity has
// scale NaN and gives NaN (x itself at lambda 0).
__global__ void __launch_bounds__(kLanes)
    act_fake_quant_kernel(const float* __restrict__ x, int64_t k, float eps, int qmax, float lambda,
                          float* __restrict__ out, float* __restrict__ scales) {
  __shared__ float fsmem[kLanes / 32];
  __shared__ int bad;
  const float* xr = x + blockIdx.x * k;
  float amax = 0.0f;
  bool finite = true;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const float a = fabsf(xr[j]);
    finite = finite && isfinite(a);
    amax = fmaxf(amax, a);
  }
  const float m = block_absmax(amax, finite, fsmem, &bad);
  const float s = act_scale(m, eps, qmax, isfinite(m));
  float* o = out + blockIdx.x * k;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const float v = xr[j];
    if (!(s == s)) {
      o[j] = lambda == 0.0f ? v : NAN;
      continue;
    }
    const float d = static_cast<float>(act_code(v, s, qmax)) / s;
    o[j] = lambda == 1.0f ? d : (lambda == 0.0f ? v : v + lambda * (d - v));
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
}

// Elementwise: the clipped straight-through gradient g * ((1 - lambda) + lambda * [|x| s / qmax <= clip]).
__global__ void act_ste_backward_kernel(const float* __restrict__ g, const float* __restrict__ x,
                                        const float* __restrict__ scales, int64_t m, int64_t k, float qmax, float clip,
                                        float lambda, float* __restrict__ dx) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * k) return;
  const float inside = (fabsf(x[i]) * scales[i / k] / qmax <= clip) ? 1.0f : 0.0f;
  dx[i] = g[i] * ((1.0f - lambda) + lambda * inside);
}

// Elementwise: ternary fake quantization blended with lambda, the CPU row kernel's arithmetic
// (ternary_rows): d = code * gamma, out = lambda == 1 ? d : lambda == 0 ? w : w + lambda * (d - w).
__global__ void ternary_fake_quant_kernel(const float* __restrict__ w, int64_t rows, int64_t cols, int64_t group,
                                          int64_t stride, const float* __restrict__ gamma, float eps, float lambda,
                                          float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float gm = gamma[r * stride + (stride > 0 ? c / group : 0)];
  const float v = w[i];
  const float d = static_cast<float>(ternary_code(v, gm, eps)) * gm;
  out[i] = lambda == 1.0f ? d : (lambda == 0.0f ? v : v + lambda * (d - v));
}

constexpr int kElementwise = 256;
unsigned blocks(int64_t items) { return static_cast<unsigned>((items + kElementwise - 1) / kElementwise); }

void check_rows(const char* what, int64_t m, int64_t k) {
  if (m < 0 || k < 1 || m > 0x7fffffff) {
    throw std::invalid_argument(std::string(what) + ": expected 0 <= M < 2^31 rows and K >= 1 columns, got M = " +
                                std::to_string(m) + ", K = " + std::to_string(k));
  }
}

}  // namespace

void rms_norm_rows(const void* x, DType x_dtype, int64_t m, int64_t k, const float* w, double eps, float* y, float* r,
                   cudaStream_t stream) {
  check_rows("rms_norm_rows", m, k);
  if (m == 0) return;
  if (x_dtype == DType::kF32) {
    launch(BITQAT_HERE, "rms_norm_kernel", rms_norm_kernel<float>, static_cast<unsigned>(m), kLanes, stream,
           static_cast<const float*>(x), k, w, eps, y, r);
  } else {
    launch(BITQAT_HERE, "rms_norm_kernel", rms_norm_kernel<__nv_bfloat16>, static_cast<unsigned>(m), kLanes, stream,
           static_cast<const __nv_bfloat16*>(x), k, w, eps, y, r);
  }
}

void quantize_rows(const void* x, DType x_dtype, int64_t m, int64_t k, int64_t ldq, float eps, int qmax,
                   const float* norm_weight, double norm_eps, int8_t* q, float* scales, cudaStream_t stream) {
  check_rows("quantize_rows", m, k);
  if (ldq < k) throw std::invalid_argument("quantize_rows: ldq must be >= K");
  if (m == 0) return;
  if (x_dtype == DType::kF32) {
    launch(BITQAT_HERE, "quantize_rows_kernel", quantize_rows_kernel<float>, static_cast<unsigned>(m), kLanes, stream,
           static_cast<const float*>(x), k, ldq, eps, qmax, norm_weight, norm_eps, q, scales);
  } else {
    launch(BITQAT_HERE, "quantize_rows_kernel", quantize_rows_kernel<__nv_bfloat16>, static_cast<unsigned>(m), kLanes,
           stream, static_cast<const __nv_bfloat16*>(x), k, ldq, eps, qmax, norm_weight, norm_eps, q, scales);
  }
}

void quantize_tensor(const float* x, int64_t n, float eps, int qmax, int8_t* q, float* scale, cudaStream_t stream) {
  launch(BITQAT_HERE, "tensor_scale_kernel", tensor_scale_kernel, 1, kLanes, stream, x, n, eps, qmax, scale);
  if (n == 0) return;
  launch(BITQAT_HERE, "tensor_codes_kernel", tensor_codes_kernel, blocks(n), kElementwise, stream, x, n, scale, qmax,
         q);
}

void weight_scales(const float* w, int64_t rows, int64_t cols, int64_t group, bool per_tensor, float* gamma,
                   float* mean, double* workspace, cudaStream_t stream) {
  check_rows("weight_scales", rows, cols);
  if (rows < 1) throw std::invalid_argument("weight_scales: the weight has no rows");
  if (group < 1) throw std::invalid_argument("weight_scales: group size must be >= 1, got " + std::to_string(group));
  if (per_tensor) {
    launch(BITQAT_HERE, "group_sums_kernel", group_sums_kernel, dim3(static_cast<unsigned>(rows), 1), kLanes, stream, w,
           cols, cols, mean != nullptr, true, nullptr, nullptr, workspace, workspace + rows);
    launch(BITQAT_HERE, "tensor_mean_kernel", tensor_mean_kernel, 1, kLanes, stream, workspace, workspace + rows, rows,
           static_cast<double>(rows) * static_cast<double>(cols), gamma, mean);
    return;
  }
  const int64_t groups = scale_groups(cols, group);
  if (groups > 65535) throw std::invalid_argument("weight_scales: more than 65535 groups per row");
  launch(BITQAT_HERE, "group_sums_kernel", group_sums_kernel,
         dim3(static_cast<unsigned>(rows), static_cast<unsigned>(groups)), kLanes, stream, w, cols, group,
         mean != nullptr, false, gamma, mean, nullptr, nullptr);
}

void weight_codes(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride, const float* gamma,
                  const float* mean, float eps, int8_t* codes, cudaStream_t stream) {
  check_rows("weight_codes", rows, cols);
  if (rows == 0) return;
  launch(BITQAT_HERE, "weight_codes_kernel", weight_codes_kernel, blocks(rows * cols), kElementwise, stream, w, rows,
         cols, group, scale_stride, gamma, mean, eps, codes);
}

void pack_codes(const int8_t* codes, int64_t n, int64_t k, uint32_t* packed, cudaStream_t stream) {
  check_rows("pack_codes", n, k);
  if (n == 0) return;
  const int64_t wpr = words_per_row(k);
  launch(BITQAT_HERE, "pack_codes_kernel", pack_codes_kernel, blocks(n * wpr), kElementwise, stream, codes, n, k, wpr,
         packed);
}

void act_fake_quant(const float* x, int64_t m, int64_t k, float eps, int qmax, float lambda, float* out, float* scales,
                    cudaStream_t stream) {
  check_rows("act_fake_quant", m, k);
  if (m == 0) return;
  launch(BITQAT_HERE, "act_fake_quant_kernel", act_fake_quant_kernel, static_cast<unsigned>(m), kLanes, stream, x, k,
         eps, qmax, lambda, out, scales);
}

void act_ste_backward(const float* g, const float* x, const float* scales, int64_t m, int64_t k, int qmax, float clip,
                      float lambda, float* dx, cudaStream_t stream) {
  check_rows("act_ste_backward", m, k);
  if (m == 0) return;
  launch(BITQAT_HERE, "act_ste_backward_kernel", act_ste_backward_kernel, blocks(m * k), kElementwise, stream, g, x,
         scales, m, k, static_cast<float>(qmax), clip, lambda, dx);
}

void ternary_fake_quant(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                        const float* gamma, float eps, float lambda, float* out, cudaStream_t stream) {
  check_rows("ternary_fake_quant", rows, cols);
  if (group < 1)
    throw std::invalid_argument("ternary_fake_quant: group size must be >= 1, got " + std::to_string(group));
  if (rows == 0) return;
  launch(BITQAT_HERE, "ternary_fake_quant_kernel", ternary_fake_quant_kernel, blocks(rows * cols), kElementwise, stream,
         w, rows, cols, group, scale_stride, gamma, eps, lambda, out);
}

BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
