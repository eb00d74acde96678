// Kernels of cuda/ copied with one planted fault each (tests/cuda/sim/planted_faults.hpp). Each copy
// keeps the original's code except the line marked PLANTED.
#include "tests/cuda/sim/planted_faults.hpp"

#include <cuda_runtime.h>

#include "cuda/launch.hpp"
#include "cuda/mma_m16n8k32.hpp"
#include "cuda/quant_codes.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::cuda::sim::faults {
namespace {

constexpr int kLanes = kReduceLanes;

// ---- out of bounds: cuda/quant.cu quantize_rows_kernel<float> without the norm ----
__global__ void __launch_bounds__(kLanes)
    quantize_rows_kernel(const float* __restrict__ x, int64_t k, int64_t ldq, float eps, int qmax,
                         int8_t* __restrict__ q, float* __restrict__ scales) {
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
  // block_absmax
  const int t = threadIdx.x;
  if (t == 0) bad = 0;
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  __syncthreads();
  if (!finite) atomicOr(&bad, 1);
  if (t % 32 == 0) fsmem[t / 32] = amax;
  __syncthreads();
  if (t < 32) {
    float v = t < kLanes / 32 ? fsmem[t] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (t == 0) fsmem[0] = v;
  }
  __syncthreads();
  const float mx = bad ? NAN : fsmem[0];
  __syncthreads();
  const float s = act_scale(mx, eps, qmax, isfinite(mx));
  int8_t* qr = q + blockIdx.x * ldq;
  for (int64_t j = threadIdx.x; j <= ldq; j += kLanes) {  // PLANTED: `<` turned into `<=`
    int8_t c = 0;
    if (j < k) c = act_code(xr[j], s, qmax);
    qr[j] = c;
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
}

// ---- race: cuda/quant.cu rms_norm_kernel<float> with canonical_block_sum ----
__device__ double canonical_block_sum(double v, double* smem) {
  const int t = threadIdx.x;
  smem[t] = v;
  // PLANTED: the __syncthreads() that belongs here is missing
  for (int o = kLanes / 2; o >= 32; o /= 2) {
    if (t < o) smem[t] += smem[t + o];
    __syncthreads();
  }
  if (t < 32) {
    double x = smem[t];
    for (int o = 16; o > 0; o /= 2) x += __shfl_down_sync(0xffffffffu, x, o);
    if (t == 0) smem[0] = x;
  }
  __syncthreads();
  const double out = smem[0];
  __syncthreads();
  return out;
}

__global__ void __launch_bounds__(kLanes)
    rms_norm_kernel(const float* __restrict__ x, int64_t k, double eps, float* __restrict__ y) {
  __shared__ double smem[kLanes];
  const float* xr = x + blockIdx.x * k;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) {
    const double v = xr[j];
    acc += v * v;
  }
  const float r = rms_inverse<float>(canonical_block_sum(acc, smem), k, eps);
  float* yr = y + blockIdx.x * k;
  for (int64_t j = threadIdx.x; j < k; j += kLanes) yr[j] = xr[j] * r;
}

// ---- layout: cuda/w158a8.cu gemm_kernel<float, true, false> ----
constexpr int kTileM = 64, kTileN = 64, kTileK = 64, kGemmThreads = 128;
constexpr int kSmemStride = kTileK + 16;

__device__ __forceinline__ int decode4(uint32_t word, int i) {
  return static_cast<int>(__vsub4((word >> (2 * i)) & 0x03030303u, 0x01010101u));
}

__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(const int8_t* __restrict__ q, int64_t m, int64_t k, int64_t kp, const uint32_t* __restrict__ packed,
                int64_t n, int32_t* __restrict__ y_int) {
  __shared__ __align__(16) int8_t As[kTileM][kSmemStride];
  __shared__ __align__(16) int8_t Bs[kTileN][kSmemStride];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t wpr = kp / kCodesPerWord;
  int acc[2][4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    for (int idx = tid; idx < kTileM * kTileK / 16; idx += kGemmThreads) {
      const int r = idx / (kTileK / 16), c16 = idx % (kTileK / 16);
      int4 v = make_int4(0, 0, 0, 0);
      if (m0 + r < m) v = *reinterpret_cast<const int4*>(q + (m0 + r) * kp + k0 + c16 * 16);
      *reinterpret_cast<int4*>(&As[r][c16 * 16]) = v;
    }
    for (int idx = tid; idx < kTileN * kTileK / kCodesPerWord; idx += kGemmThreads) {
      const int r = idx / (kTileK / kCodesPerWord), wj = idx % (kTileK / kCodesPerWord);
      const uint32_t word = n0 + r < n ? packed[(n0 + r) * wpr + k0 / kCodesPerWord + wj] : 0x55555555u;
      for (int i = 0; i < 4; ++i) *reinterpret_cast<int*>(&Bs[r][wj * 16 + 4 * i]) = decode4(word, i);
    }
    __syncthreads();
    for (int kk = 0; kk < kTileK; kk += 32) {
      uint32_t a[2][4], b[4][2];
      for (int mt = 0; mt < 2; ++mt) {
        const int r = wm * 32 + mt * 16 + g;
        a[mt][0] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 4 * t]);
        a[mt][1] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 4 * t]);  // PLANTED: row r, not r + 8
        a[mt][2] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 16 + 4 * t]);
        a[mt][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 16 + 4 * t]);
      }
      for (int nt = 0; nt < 4; ++nt) {
        const int r = wn * 32 + nt * 8 + g;
        b[nt][0] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 4 * t]);
        b[nt][1] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 16 + 4 * t]);
      }
      for (int mt = 0; mt < 2; ++mt)
        for (int nt = 0; nt < 4; ++nt) sim::mma_m16n8k32_s8(acc[mt][nt], a[mt], b[nt], __FILE__, __LINE__);
    }
    __syncthreads();
  }
  for (int mt = 0; mt < 2; ++mt)
    for (int nt = 0; nt < 4; ++nt)
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm * 32 + mt * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + wn * 32 + nt * 8 + 2 * t + (e & 1);
        if (row < m && col < n) y_int[row * n + col] = acc[mt][nt][e];
      }
}

// ---- divergence: cuda/quant.cu tensor_scale_kernel with block_absmax ----
__device__ float block_absmax(float a, bool finite, float* smem, int* bad) {
  const int t = threadIdx.x;
  if (t == 0) *bad = 0;
  if (t % 32 < 16) {  // PLANTED: the shuffle sits inside a lane-dependent branch
    for (int o = 16; o > 0; o /= 2) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  }
  __syncthreads();
  if (!finite) atomicOr(bad, 1);
  if (t % 32 == 0) smem[t / 32] = a;
  __syncthreads();
  if (t < 32) {
    float x = t < kLanes / 32 ? smem[t] : 0.0f;
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (t == 0) smem[0] = x;
  }
  __syncthreads();
  const float out = *bad ? NAN : smem[0];
  __syncthreads();
  return out;
}

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

// ---- out of bounds in shared memory: cuda/quant.cu tensor_scale_kernel with block_absmax ----
__device__ float block_absmax_one_slot_on(float a, bool finite, float* smem, int* bad) {
  const int t = threadIdx.x;
  if (t == 0) *bad = 0;
  for (int o = 16; o > 0; o /= 2) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  __syncthreads();
  if (!finite) atomicOr(bad, 1);
  if (t % 32 == 0) smem[t / 32 + 1] = a;  // PLANTED: one slot on, past the partials for the last warp
  __syncthreads();
  if (t < 32) {
    float x = t < kLanes / 32 ? smem[t] : 0.0f;
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (t == 0) smem[0] = x;
  }
  __syncthreads();
  const float out = *bad ? NAN : smem[0];
  __syncthreads();
  return out;
}

__global__ void __launch_bounds__(kLanes)
    tensor_scale_oob_kernel(const float* __restrict__ x, int64_t n, float eps, int qmax, float* __restrict__ scale) {
  __shared__ float fsmem[kLanes / 32];
  __shared__ int bad;
  float amax = 0.0f;
  bool finite = true;
  for (int64_t j = threadIdx.x; j < n; j += kLanes) {
    const float a = fabsf(x[j]);
    finite = finite && isfinite(a);
    amax = fmaxf(amax, a);
  }
  const float m = block_absmax_one_slot_on(amax, finite, fsmem, &bad);
  if (threadIdx.x == 0) scale[0] = act_scale(m, eps, qmax, isfinite(m));
}

// ---- sanitizer demonstrations ----
__global__ void vector_over_read_kernel(const uint4* __restrict__ wp, int64_t chunks, int32_t* out) {
  uint32_t acc = 0;
  for (int64_t c = threadIdx.x; c <= chunks; c += 32) {  // PLANTED: one 16-byte chunk past the row
    const uint4 w4 = __ldg(wp + c);
    acc += w4.x ^ w4.y ^ w4.z ^ w4.w;
  }
  atomicAdd(out, static_cast<int32_t>(acc & 0xffff));
}

__global__ void full_width_shift_kernel(uint32_t word, int32_t* out) {
  int s = 0;
  for (int i = 0; i <= 16; i += 4) s += decode4(word, i);  // PLANTED: i = 16 shifts by 32
  out[0] = s;
}

__global__ void int32_offset_kernel(int64_t k, int32_t* out) {
  const int row = static_cast<int>(blockIdx.x) * static_cast<int>(k);  // PLANTED: int32 row offset
  if (row == 12345) out[0] = row;
}

}  // namespace

void tensor_scale_past_the_partials(const float* x, int64_t n, float* scale) {
  launch(BITQAT_HERE, "tensor_scale_oob_kernel", tensor_scale_oob_kernel, 1, kLanes, nullptr, x, n, 1e-5f, 127, scale);
}

void vector_over_read(const uint32_t* packed, int64_t words, int32_t* out) {
  launch(BITQAT_HERE, "vector_over_read_kernel", vector_over_read_kernel, 1, 32, nullptr,
         reinterpret_cast<const uint4*>(packed), words / 4, out);
}

void decode_with_full_width_shift(uint32_t word, int32_t* out) {
  launch(BITQAT_HERE, "full_width_shift_kernel", full_width_shift_kernel, 1, 1, nullptr, word, out);
}

void int32_row_offset(int64_t k, int32_t* out) {
  launch(BITQAT_HERE, "int32_offset_kernel", int32_offset_kernel, 3, 1, nullptr, k, out);
}

void quantize_rows_past_the_row(const float* x, int64_t m, int64_t k, int64_t ldq, int8_t* q, float* scales) {
  launch(BITQAT_HERE, "quantize_rows_kernel", quantize_rows_kernel, static_cast<unsigned>(m), kLanes, nullptr, x, k,
         ldq, 1e-5f, 127, q, scales);
}

void rms_norm_without_barrier(const float* x, int64_t m, int64_t k, float* y) {
  launch(BITQAT_HERE, "rms_norm_kernel", rms_norm_kernel, static_cast<unsigned>(m), kLanes, nullptr, x, k, 1e-6, y);
}

void gemm_with_wrong_fragment(const int8_t* q, int64_t m, int64_t k, const uint32_t* packed, int64_t n,
                              int32_t* y_int) {
  const dim3 grid(static_cast<unsigned>((n + kTileN - 1) / kTileN), static_cast<unsigned>((m + kTileM - 1) / kTileM));
  launch(BITQAT_HERE, "gemm_kernel", gemm_kernel, grid, kGemmThreads, nullptr, q, m, k, padded_k(k), packed, n, y_int);
}

void tensor_scale_with_divergent_shuffle(const float* x, int64_t n, float* scale) {
  launch(BITQAT_HERE, "tensor_scale_kernel", tensor_scale_kernel, 1, kLanes, nullptr, x, n, 1e-5f, 127, scale);
}

}  // namespace bitqat::cuda::sim::faults
