// The W1.58A8 GEMVs (M <= 16, memory bound: the packed weights are the traffic), dp4a on decoded
// 2-bit codes. Built with --fmad=false (cuda/CMakeLists.txt), so every product and sum rounds once,
// as the scalar references do:
//   kGemvColumn: one warp per output column, lanes stride over 64-weight chunks (one 16-byte weight
//     load each) reading the activations from global memory for every column;
//   kGemvTiled: each block stages the activations of its K range once in shared memory (32 chunks a
//     pass), each warp owns 4 columns (M <= 4) or 2 (M <= 16) whose 16-byte loads are in flight
//     together; blockIdx.y is the split-K part;
//   fused M = 1: each block quantizes the token row into shared memory exactly as quantize_rows does
//     (the canonical sum for the RMSNorm, the absmax), then runs the tiled GEMV on it.
// Only chunks holding some k < K are visited: the row padding past K is zero codes without a scale
// group (reading one would run past the row's scales, or past the tensor for row N - 1).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda/block_reduce.cuh"
#include "cuda/launch.hpp"
#include "cuda/w158a8_kernels.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace w158a8 {
namespace {

unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

// ---- kGemvColumn -------------------------------------------------------------------------------

constexpr int kColumnMaxM = 16;
constexpr int kColumnWarps = 8;

template <bool kPerGroup>
__global__ void __launch_bounds__(kColumnWarps * 32)
    gemv_column_kernel(const int8_t* __restrict__ q, int m, int64_t k, int64_t kp, const uint4* __restrict__ wp,
                       const float* __restrict__ ws, int64_t stride, int64_t group, int64_t n, Out out) {
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColumnWarps + threadIdx.x / 32;
  if (col >= n) return;            // whole warps: no collective below is split
  const int64_t chunks = kp / 64;  // 16-byte loads per packed row (its stride)
  const int64_t live = live_chunks(k);
  int32_t acci[kColumnMaxM];
  float accf[kColumnMaxM];
#pragma unroll
  for (int i = 0; i < kColumnMaxM; ++i) acci[i] = 0, accf[i] = 0.0f;
  for (int64_t c = lane; c < live; c += 32) {
    const uint4 w4 = __ldg(wp + col * chunks + c);
    const uint32_t words[4] = {w4.x, w4.y, w4.z, w4.w};
    int dec[16];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dec[j * 4 + i] = decode4(words[j], i);
    }
    const float sc = kPerGroup ? ws[scale_index(col, c * 64, stride, group)] : 0.0f;
#pragma unroll
    for (int mm = 0; mm < kColumnMaxM; ++mm) {
      if (mm < m) {
        const int4* xr = reinterpret_cast<const int4*>(q + mm * kp) + c * 4;
        int s = 0;
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const int4 x4 = __ldg(xr + v);
          s = __dp4a(dec[v * 4 + 0], x4.x, s);
          s = __dp4a(dec[v * 4 + 1], x4.y, s);
          s = __dp4a(dec[v * 4 + 2], x4.z, s);
          s = __dp4a(dec[v * 4 + 3], x4.w, s);
        }
        if (kPerGroup) {
          accf[mm] += static_cast<float>(s) * sc;
        } else {
          acci[mm] += s;
        }
      }
    }
  }
#pragma unroll
  for (int mm = 0; mm < kColumnMaxM; ++mm) {
    if (mm < m) {
      for (int o = 16; o > 0; o >>= 1) {
        if (kPerGroup) {
          accf[mm] += __shfl_xor_sync(0xffffffffu, accf[mm], o);
        } else {
          acci[mm] += __shfl_xor_sync(0xffffffffu, acci[mm], o);
        }
      }
      if (lane == 0) {
        if (kPerGroup) {
          emit_float(out, mm, col, 0, accf[mm]);
        } else {
          emit_int(out, mm, col, 0, acci[mm]);
        }
      }
    }
  }
}

// ---- the tiled GEMVs ---------------------------------------------------------------------------

constexpr int kTiledWarps = 8, kTiledThreads = kTiledWarps * 32;
static_assert(kTiledThreads == reduce::kLanes, "the fused kernel quantizes with the canonical block reductions");
constexpr int kStageChunks = 32;  // 64-weight chunks of activations staged per pass: one per lane
// Bytes per staged chunk: 16-byte aligned, and lanes reading chunks lane, lane + 1, ... at 80-byte
// strides cover all 32 banks in 4 wavefronts (a 64-byte stride would take 16).
constexpr int kChunkStride = 80;
constexpr int kFusedChunks = static_cast<int>(kFusedMaxK / 64);

// Columns per warp: 4 while the accumulators are few (M <= 4), else 2.
template <int kM>
constexpr int kTiledCols = kM <= 4 ? 4 : 2;

// The dot products of one 64-weight chunk (16 packed words, decoded once) with rows [0, m) of staged
// activations (row mm at x + mm * row_stride).
template <int kM>
__device__ __forceinline__ void chunk_dots(const uint4& w4, const int8_t* x, int row_stride, int m, int32_t (&s)[kM]) {
  const uint32_t words[4] = {w4.x, w4.y, w4.z, w4.w};
  int dec[16];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dec[j * 4 + i] = decode4(words[j], i);
  }
#pragma unroll
  for (int mm = 0; mm < kM; ++mm) {
    s[mm] = 0;
    if (mm < m) {
      const int4* xr = reinterpret_cast<const int4*>(x + mm * row_stride);
      int acc = 0;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int4 x4 = xr[v];
        acc = __dp4a(dec[v * 4 + 0], x4.x, acc);
        acc = __dp4a(dec[v * 4 + 1], x4.y, acc);
        acc = __dp4a(dec[v * 4 + 2], x4.z, acc);
        acc = __dp4a(dec[v * 4 + 3], x4.w, acc);
      }
      s[mm] = acc;
    }
  }
}

// One lane's chunk c (absolute index) of kCols columns from col0 against staged activations x (row
// stride row_stride), accumulated into acc.
template <int kM, int kCols, bool kPerGroup, class Acc>
__device__ __forceinline__ void accumulate_chunk(const uint4* __restrict__ wp, int64_t row_words4, int64_t col0,
                                                 int64_t n, int64_t c, const int8_t* x, int row_stride, int m,
                                                 const float* __restrict__ ws, int64_t stride, int64_t group,
                                                 Acc (&acc)[kM][kCols]) {
  uint4 w4[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) {  // the loads first: kCols 16-byte loads in flight
    const int64_t col = col0 + j;
    w4[j] = col < n ? __ldg(wp + col * row_words4 + c) : make_uint4(kZeroWord, kZeroWord, kZeroWord, kZeroWord);
  }
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    int32_t s[kM];
    chunk_dots<kM>(w4[j], x, row_stride, m, s);
    if (kPerGroup) {
      const int64_t col = col0 + j;
      const float sc = col < n ? ws[scale_index(col, c * 64, stride, group)] : 0.0f;
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) acc[mm][j] += static_cast<float>(s[mm]) * sc;
    } else {
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) acc[mm][j] += s[mm];
    }
  }
}

// The lanes' partial sums added (xor tree: every lane holds the total), then lane 0 writes them.
template <int kM, int kCols, bool kPerGroup, class Acc>
__device__ __forceinline__ void finish(Acc (&acc)[kM][kCols], int m, int64_t col0, int64_t n, int split,
                                       const Out& out) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mm = 0; mm < kM; ++mm) {
    if (mm < m) {
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        for (int o = 16; o > 0; o >>= 1) acc[mm][j] += __shfl_xor_sync(0xffffffffu, acc[mm][j], o);
      }
    }
  }
  if (lane != 0) return;
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    const int64_t col = col0 + j;
    if (col >= n) continue;
#pragma unroll
    for (int mm = 0; mm < kM; ++mm) {
      if (mm < m) {
        if (kPerGroup) {
          emit_float(out, mm, col, split, static_cast<float>(acc[mm][j]));
        } else {
          emit_int(out, mm, col, split, static_cast<int32_t>(acc[mm][j]));
        }
      }
    }
  }
}

template <int kM, bool kPerGroup>
__global__ void __launch_bounds__(kTiledThreads)
    gemv_tiled_kernel(const int8_t* __restrict__ q, int m, int64_t k, int64_t kp, const uint4* __restrict__ wp,
                      const float* __restrict__ ws, int64_t stride, int64_t group, int64_t n, int64_t per_split,
                      Out out) {
  constexpr int kCols = kTiledCols<kM>;
  constexpr int kRowStride = kStageChunks * kChunkStride;
  using Acc = std::conditional_t<kPerGroup, float, int32_t>;
  __shared__ __align__(16) int8_t xs[kM * kRowStride];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * kTiledWarps + warp) * kCols;
  const int64_t row_words4 = kp / 64;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * per_split;
  const int64_t c_end = min(live_chunks(k), c_begin + per_split);
  Acc acc[kM][kCols];
#pragma unroll
  for (int mm = 0; mm < kM; ++mm)
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[mm][j] = 0;
  for (int64_t s0 = c_begin; s0 < c_end; s0 += kStageChunks) {
    const int nch = static_cast<int>(min(static_cast<int64_t>(kStageChunks), c_end - s0));
    __syncthreads();  // the previous pass is consumed
    for (int idx = threadIdx.x; idx < m * nch * 4; idx += kTiledThreads) {
      const int r = idx / (nch * 4), part = idx % (nch * 4);
      *reinterpret_cast<int4*>(&xs[r * kRowStride + (part / 4) * kChunkStride + (part % 4) * 16]) =
          *reinterpret_cast<const int4*>(q + r * kp + (s0 + part / 4) * 64 + (part % 4) * 16);
    }
    __syncthreads();
    if (lane < nch) {
      accumulate_chunk<kM, kCols, kPerGroup>(wp, row_words4, col0, n, s0 + lane, &xs[lane * kChunkStride], kRowStride,
                                             m, ws, stride, group, acc);
    }
  }
  finish<kM, kCols, kPerGroup>(acc, m, col0, n, static_cast<int>(blockIdx.y), out);
}

template <typename T, bool kPerGroup>
__global__ void __launch_bounds__(kTiledThreads)
    gemv_fused_kernel(const T* __restrict__ x, int64_t k, float eps, const float* __restrict__ nw, double norm_eps,
                      int64_t kp, const uint4* __restrict__ wp, const float* __restrict__ ws, int64_t stride,
                      int64_t group, int64_t n, int64_t per_split, Out out, float* __restrict__ scale_out) {
  constexpr int kCols = kTiledCols<1>;
  using Acc = std::conditional_t<kPerGroup, float, int32_t>;
  __shared__ __align__(16) int8_t codes[kFusedChunks * kChunkStride];
  __shared__ double dsum[reduce::kLanes];
  __shared__ float fmax_[reduce::kLanes / 32];
  __shared__ int bad;
  __shared__ float scale;
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  // The token's scale, as quantize_rows_kernel computes it: the RMSNorm's canonical sum of squares,
  // then the absmax of the normalized values.
  float r = 1.0f;
  if (nw) {
    double acc = 0.0;
    for (int64_t j = t; j < k; j += reduce::kLanes) {
      const double v = reduce::to_float(x[j]);
      acc += v * v;
    }
    r = rms_inverse<float>(reduce::canonical_block_sum(acc, dsum), k, norm_eps);
  }
  float amax = 0.0f;
  bool finite = true;
  for (int64_t j = t; j < k; j += reduce::kLanes) {
    const float v = reduce::to_float(x[j]);
    const float a = fabsf(nw ? rms_apply(v, r, nw[j]) : v);
    finite = finite && isfinite(a);
    amax = fmaxf(amax, a);
  }
  const float mx = reduce::block_absmax(amax, finite, fmax_, &bad);
  const float s = act_scale(mx, eps, 127, isfinite(mx));
  // The codes of this part's chunks, staged as the tiled kernel stages them.
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * per_split;
  const int64_t c_end = min(live_chunks(k), c_begin + per_split);
  for (int64_t j = c_begin * 64 + t; j < c_end * 64; j += reduce::kLanes) {
    int8_t c = 0;
    if (j < k) {
      const float v = reduce::to_float(x[j]);
      c = act_code(nw ? rms_apply(v, r, nw[j]) : v, s, 127);
    }
    codes[(j / 64 - c_begin) * kChunkStride + j % 64] = c;
  }
  if (t == 0) {
    scale = s;
    if (scale_out && blockIdx.x == 0 && blockIdx.y == 0) *scale_out = s;
  }
  __syncthreads();
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * kTiledWarps + warp) * kCols;
  Acc acc[1][kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) acc[0][j] = 0;
  for (int64_t c = c_begin + lane; c < c_end; c += 32) {
    accumulate_chunk<1, kCols, kPerGroup>(wp, kp / 64, col0, n, c, &codes[(c - c_begin) * kChunkStride], 0, 1, ws,
                                          stride, group, acc);
  }
  Out o = out;
  o.xs = &scale;
  finish<1, kCols, kPerGroup>(acc, 1, col0, n, static_cast<int>(blockIdx.y), o);
}

template <int kM>
void launch_tiled_m(const Problem& p, int splits, const Out& out, cudaStream_t stream) {
  const int64_t per_split = chunks_per_split(p.k, splits);
  const dim3 grid(blocks_for(p.n, int64_t{kTiledWarps} * kTiledCols<kM>), static_cast<unsigned>(splits));
  const auto* wp = reinterpret_cast<const uint4*>(p.packed);
  if (p.per_group) {
    launch(BITQAT_HERE, "gemv_tiled_kernel", gemv_tiled_kernel<kM, true>, grid, kTiledThreads, stream, p.q,
           static_cast<int>(p.m), p.k, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out);
  } else {
    launch(BITQAT_HERE, "gemv_tiled_kernel", gemv_tiled_kernel<kM, false>, grid, kTiledThreads, stream, p.q,
           static_cast<int>(p.m), p.k, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out);
  }
}

}  // namespace

void launch_gemv_column(const Problem& p, const Out& out, cudaStream_t stream) {
  const auto* wp = reinterpret_cast<const uint4*>(p.packed);
  const unsigned blocks = blocks_for(p.n, kColumnWarps);
  if (p.per_group) {
    launch(BITQAT_HERE, "gemv_column_kernel", gemv_column_kernel<true>, blocks, kColumnWarps * 32, stream, p.q,
           static_cast<int>(p.m), p.k, p.kp, wp, p.ws, p.stride, p.group, p.n, out);
  } else {
    launch(BITQAT_HERE, "gemv_column_kernel", gemv_column_kernel<false>, blocks, kColumnWarps * 32, stream, p.q,
           static_cast<int>(p.m), p.k, p.kp, wp, p.ws, p.stride, p.group, p.n, out);
  }
}

void launch_gemv_tiled(const Problem& p, int splits, const Out& out, cudaStream_t stream) {
  if (p.m <= 1) {
    launch_tiled_m<1>(p, splits, out, stream);
  } else if (p.m <= 2) {
    launch_tiled_m<2>(p, splits, out, stream);
  } else if (p.m <= 4) {
    launch_tiled_m<4>(p, splits, out, stream);
  } else if (p.m <= 8) {
    launch_tiled_m<8>(p, splits, out, stream);
  } else {
    launch_tiled_m<16>(p, splits, out, stream);
  }
}

void launch_gemv_fused(const void* x, DType x_dtype, const float* norm_weight, float eps, float norm_eps,
                       const Problem& p, int splits, const Out& out, float* scale_out, cudaStream_t stream) {
  const int64_t per_split = chunks_per_split(p.k, splits);
  const dim3 grid(blocks_for(p.n, int64_t{kTiledWarps} * kTiledCols<1>), static_cast<unsigned>(splits));
  const auto* wp = reinterpret_cast<const uint4*>(p.packed);
  const double ne = static_cast<double>(norm_eps);
  if (x_dtype == DType::kF32) {
    const auto* xf = static_cast<const float*>(x);
    p.per_group
        ? launch(BITQAT_HERE, "gemv_fused_kernel", gemv_fused_kernel<float, true>, grid, kTiledThreads, stream, xf, p.k,
                 eps, norm_weight, ne, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out, scale_out)
        : launch(BITQAT_HERE, "gemv_fused_kernel", gemv_fused_kernel<float, false>, grid, kTiledThreads, stream, xf,
                 p.k, eps, norm_weight, ne, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out, scale_out);
  } else {
    const auto* xb = static_cast<const __nv_bfloat16*>(x);
    p.per_group
        ? launch(BITQAT_HERE, "gemv_fused_kernel", gemv_fused_kernel<__nv_bfloat16, true>, grid, kTiledThreads, stream,
                 xb, p.k, eps, norm_weight, ne, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out, scale_out)
        : launch(BITQAT_HERE, "gemv_fused_kernel", gemv_fused_kernel<__nv_bfloat16, false>, grid, kTiledThreads, stream,
                 xb, p.k, eps, norm_weight, ne, p.kp, wp, p.ws, p.stride, p.group, p.n, per_split, out, scale_out);
  }
}

}  // namespace w158a8
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
