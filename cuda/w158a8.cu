// W1.58A8 kernels: activation quantization, ternary quantize-and-pack, GEMV (dp4a) and GEMM
// (int8 mma.sync). Layouts: cuda/ternary_format.hpp; launchers: cuda/w158a8.hpp.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/check.hpp"
#include "cuda/launch.hpp"
#include "cuda/mma_m16n8k32.hpp"
#include "cuda/quant.hpp"
#include "cuda/w158a8.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// Four signed int8 lanes of codes from a word and a shift i (0..3).
__device__ __forceinline__ int decode4(uint32_t word, int i) {
  return static_cast<int>(__vsub4((word >> (2 * i)) & 0x03030303u, 0x01010101u));
}

// GEMV: one warp per output column n, lanes stride over 64-weight chunks (one 16-byte load each).
// Only the chunks holding some k < K are visited: the row padding past K is zero codes, and its chunks
// have no scale group (reading one would run past the row's scales, or past the tensor for row N-1).
constexpr int kGemvMaxM = 16;
constexpr int kGemvWarps = 8;
template <typename OutT, bool kRaw, bool kPerGroup>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const int8_t* __restrict__ q, const float* __restrict__ xs, int m, int64_t k, int64_t kp,
                const uint4* __restrict__ wp, const float* __restrict__ ws, int64_t scale_stride_n, int64_t group,
                int64_t n, const float* __restrict__ bias, OutT* __restrict__ y, int32_t* __restrict__ y_int) {
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (col >= n) return;
  const int64_t chunks = kp / 64;             // 16-byte loads per packed row (its stride)
  const int64_t live_chunks = (k + 63) / 64;  // those holding some k < K
  int32_t acci[kGemvMaxM];
  float accf[kGemvMaxM];
#pragma unroll
  for (int i = 0; i < kGemvMaxM; ++i) acci[i] = 0, accf[i] = 0.0f;
  for (int64_t c = lane; c < live_chunks; c += 32) {
    const uint4 w4 = __ldg(wp + col * chunks + c);
    const uint32_t words[4] = {w4.x, w4.y, w4.z, w4.w};
    int dec[16];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dec[j * 4 + i] = decode4(words[j], i);
    }
    const float sc = kPerGroup ? ws[scale_index(col, c * 64, scale_stride_n, group)] : 0.0f;
#pragma unroll
    for (int mm = 0; mm < kGemvMaxM; ++mm) {
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
  for (int mm = 0; mm < kGemvMaxM; ++mm) {
    if (mm < m) {
      for (int o = 16; o > 0; o >>= 1) {
        acci[mm] += __shfl_xor_sync(0xffffffffu, acci[mm], o);
        accf[mm] += __shfl_xor_sync(0xffffffffu, accf[mm], o);
      }
      if (lane == 0) {
        if (kRaw) {
          y_int[mm * n + col] = acci[mm];
        } else {
          const float total = kPerGroup ? accf[mm] : static_cast<float>(acci[mm]) * ws[col * scale_stride_n];
          store(y + mm * n + col, total / xs[mm] + (bias ? bias[col] : 0.0f));
        }
      }
    }
  }
}

// GEMM: a 64 x 64 output tile per block of 4 warps (2 x 2, 32 x 32 each), K in steps of 64 staged in
// shared memory (weights decoded to int8 there), mma.sync m16n8k32 s8 x s8 -> s32.
constexpr int kTileM = 64, kTileN = 64, kTileK = 64, kGemmThreads = 128;
constexpr int kSmemStride = kTileK + 16;  // bytes per staged row: 16-byte aligned, fewer bank conflicts
static_assert(kSmemStride % 16 == 0, "staged rows must stay 16-byte aligned");
static_assert(kTileK % kGroupAlign == 0, "a K tile is whole scale-group chunks");

// Fragments: cuda/mma_m16n8k32.hpp. On the CPU harness (no __CUDA_ARCH__) the instruction is
// emulated from that table.
__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  sim::mma_m16n8k32_s8(c, a, b, __FILE__, __LINE__);
#endif
}

template <typename OutT, bool kRaw, bool kPerGroup>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(const int8_t* __restrict__ q, const float* __restrict__ xs, int64_t m, int64_t k, int64_t kp,
                const uint32_t* __restrict__ packed, const float* __restrict__ ws, int64_t scale_stride_n,
                int64_t group, int64_t n, const float* __restrict__ bias, OutT* __restrict__ y,
                int32_t* __restrict__ y_int) {
  __shared__ __align__(16) int8_t As[kTileM][kSmemStride];
  __shared__ __align__(16) int8_t Bs[kTileN][kSmemStride];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t wpr = kp / kCodesPerWord;

  int acc[2][4][4];
  float accf[2][4][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0, accf[a][b][c] = 0.0f;

  // K tiles holding some k < K only (tiles of the zero padding add nothing and have no scale group);
  // k0 < K and kTileK | kBlockK keep every staged tile inside the padded row.
  static_assert(kBlockK % kTileK == 0, "a K tile never straddles the row padding");
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    // Stage A: 64 rows x 64 bytes = 256 x 16 bytes.
    for (int idx = tid; idx < kTileM * kTileK / 16; idx += kGemmThreads) {
      const int r = idx / (kTileK / 16), c16 = idx % (kTileK / 16);
      int4 v = make_int4(0, 0, 0, 0);
      if (m0 + r < m) v = *reinterpret_cast<const int4*>(q + (m0 + r) * kp + k0 + c16 * 16);
      *reinterpret_cast<int4*>(&As[r][c16 * 16]) = v;
    }
    // Stage B: 64 rows x 4 words, decoded to int8 (rows past N decode to zeros).
    for (int idx = tid; idx < kTileN * kTileK / kCodesPerWord; idx += kGemmThreads) {
      const int r = idx / (kTileK / kCodesPerWord), wj = idx % (kTileK / kCodesPerWord);
      const uint32_t word = n0 + r < n ? packed[(n0 + r) * wpr + k0 / kCodesPerWord + wj] : 0x55555555u;
#pragma unroll
      for (int i = 0; i < 4; ++i) *reinterpret_cast<int*>(&Bs[r][wj * 16 + 4 * i]) = decode4(word, i);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 32) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int r = wm * 32 + mt * 16 + g;
        a[mt][0] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 4 * t]);
        a[mt][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 4 * t]);
        a[mt][2] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 16 + 4 * t]);
        a[mt][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 16 + 4 * t]);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int r = wn * 32 + nt * 8 + g;
        b[nt][0] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 4 * t]);
        b[nt][1] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 16 + 4 * t]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_s8(acc[mt][nt], a[mt], b[nt]);
    }
    __syncthreads();
    if (kPerGroup) {
      const int64_t k_end = k0 + kTileK;
      if (k_end % group == 0 || k_end >= k) {  // the end of a group, or the last tile
        const int64_t gi = k0 / group;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int64_t col = n0 + wn * 32 + nt * 8 + 2 * t + (e & 1);
              const float sc = col < n ? ws[col * scale_stride_n + gi] : 0.0f;
              accf[mt][nt][e] += static_cast<float>(acc[mt][nt][e]) * sc;
              acc[mt][nt][e] = 0;
            }
      }
    }
  }
  // Epilogue: c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm * 32 + mt * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + wn * 32 + nt * 8 + 2 * t + (e & 1);
        if (row >= m || col >= n) continue;
        if (kRaw) {
          y_int[row * n + col] = acc[mt][nt][e];
        } else {
          const float total =
              kPerGroup ? accf[mt][nt][e] : static_cast<float>(acc[mt][nt][e]) * ws[col * scale_stride_n];
          store(y + row * n + col, total / xs[row] + (bias ? bias[col] : 0.0f));
        }
      }
}

unsigned blocks_for(int64_t items, int per_block) { return static_cast<unsigned>((items + per_block - 1) / per_block); }

template <typename OutT, bool kRaw, bool kPerGroup>
void launch_matmul(const int8_t* q, const float* xs, int64_t m, int64_t k, int64_t kp, const uint32_t* packed,
                   const float* ws, int64_t stride, int64_t group, int64_t n, const float* bias, OutT* y,
                   int32_t* y_int, cudaStream_t stream) {
  if (uses_gemv(m)) {
    launch(BITQAT_HERE, "gemv_kernel", gemv_kernel<OutT, kRaw, kPerGroup>, blocks_for(n, kGemvWarps), kGemvWarps * 32,
           stream, q, xs, static_cast<int>(m), k, kp, reinterpret_cast<const uint4*>(packed), ws, stride, group, n,
           bias, y, y_int);
  } else {
    const dim3 grid(blocks_for(n, kTileN), blocks_for(m, kTileM));
    launch(BITQAT_HERE, "gemm_kernel", gemm_kernel<OutT, kRaw, kPerGroup>, grid, kGemmThreads, stream, q, xs, m, k, kp,
           packed, ws, stride, group, n, bias, y, y_int);
  }
}

void check_sizes(int64_t m, int64_t n, int64_t k) {
  if (m < 1 || n < 1 || k < 1) {
    throw std::invalid_argument("w158a8: M, N and K must be >= 1, got " + std::to_string(m) + ", " + std::to_string(n) +
                                ", " + std::to_string(k));
  }
}

// The GEMM's grid has one row of blocks per 64 tokens (at most 65535 rows).
void check_grid(int64_t m) {
  if (!uses_gemv(m) && (m + kTileM - 1) / kTileM > 65535) {
    throw std::invalid_argument("w158a8_matmul: M = " + std::to_string(m) + " exceeds the GEMM grid (at most " +
                                std::to_string(int64_t{65535} * kTileM) + " rows); split the batch");
  }
}

}  // namespace

void quantize_activations(const void* x, DType x_dtype, int64_t m, int64_t k, float eps, const float* norm_weight,
                          float norm_eps, int8_t* q, float* scales, cudaStream_t stream) {
  check_sizes(m, 1, k);
  quantize_rows(x, x_dtype, m, k, padded_k(k), eps, 127, norm_weight, norm_eps, q, scales, stream);
}

void quantize_pack_ternary(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps,
                           float* scales, int8_t* codes, double* workspace, uint32_t* packed, cudaStream_t stream) {
  check_sizes(1, n, k);
  if (kind == ScaleKind::kPerGroup && (group < 1 || group % kGroupAlign != 0)) {
    throw std::invalid_argument("quantize_pack_ternary: group size must be a positive multiple of 64, got " +
                                std::to_string(group));
  }
  const int64_t g = kind == ScaleKind::kPerGroup ? group : k;
  const int64_t stride = kind == ScaleKind::kPerTensor ? 0 : scale_groups(k, g);
  weight_scales(w, n, k, g, kind == ScaleKind::kPerTensor, scales, nullptr, workspace, stream);
  weight_codes(w, n, k, g, stride, scales, nullptr, eps, codes, stream);
  pack_codes(codes, n, k, packed, stream);
}

void w158a8_matmul(const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed, const float* wscales,
                   ScaleKind kind, int64_t group, int64_t n, int64_t k, const float* bias, void* y, DType y_dtype,
                   cudaStream_t stream) {
  check_sizes(m, n, k);
  check_grid(m);
  const int64_t kp = padded_k(k);
  if (kind != ScaleKind::kPerTensor && kind != ScaleKind::kPerChannel && kind != ScaleKind::kPerGroup) {
    throw std::invalid_argument("w158a8_matmul: unknown scale kind " + std::to_string(static_cast<int>(kind)));
  }
  if (y_dtype != DType::kF32 && y_dtype != DType::kBF16) {
    throw std::invalid_argument("w158a8_matmul: output dtype must be float32 or bf16, got code " +
                                std::to_string(static_cast<int>(y_dtype)));
  }
  if (!q || !xscales || !packed || !wscales || !y) {
    throw std::invalid_argument("w158a8_matmul: null operand (q, xscales, packed, wscales and y are required)");
  }
  const bool per_group = kind == ScaleKind::kPerGroup;
  if (per_group && (group < 1 || group % kGroupAlign != 0)) {
    throw std::invalid_argument("w158a8_matmul: group size must be a positive multiple of 64, got " +
                                std::to_string(group));
  }
  const int64_t stride = kind == ScaleKind::kPerTensor ? 0 : (per_group ? scale_groups(k, group) : 1);
  const int64_t g = per_group ? group : kp;
  if (y_dtype == DType::kF32) {
    auto* out = static_cast<float*>(y);
    per_group ? launch_matmul<float, false, true>(q, xscales, m, k, kp, packed, wscales, stride, g, n, bias, out,
                                                  nullptr, stream)
              : launch_matmul<float, false, false>(q, xscales, m, k, kp, packed, wscales, stride, g, n, bias, out,
                                                   nullptr, stream);
  } else {
    auto* out = static_cast<__nv_bfloat16*>(y);
    per_group ? launch_matmul<__nv_bfloat16, false, true>(q, xscales, m, k, kp, packed, wscales, stride, g, n, bias,
                                                          out, nullptr, stream)
              : launch_matmul<__nv_bfloat16, false, false>(q, xscales, m, k, kp, packed, wscales, stride, g, n, bias,
                                                           out, nullptr, stream);
  }
}

void w158a8_matmul_int32(const int8_t* q, int64_t m, const uint32_t* packed, int64_t n, int64_t k, int32_t* y_int,
                         cudaStream_t stream) {
  check_sizes(m, n, k);
  check_grid(m);
  if (!q || !packed || !y_int) throw std::invalid_argument("w158a8_matmul_int32: null operand");
  const int64_t kp = padded_k(k);
  launch_matmul<float, true, false>(q, nullptr, m, k, kp, packed, nullptr, 0, kp, n, nullptr, nullptr, y_int, stream);
}

BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
