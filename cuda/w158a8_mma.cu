// The W1.58A8 tensor-core kernels (any M): output tiles of kTileM x 64 per block of 4 warps, K in
// tiles of 64 staged in shared memory with the weights decoded to int8 there, mma.sync m16n8k32
// s8 x s8 -> s32 (fragments: cuda/mma_m16n8k32.hpp). Built with --fmad=false.
//   kMma:          64 x 64 tiles, 2 x 2 warps of 32 x 32 (the first GEMM);
//   kMmaSmall:     32 x 64 tiles, 1 x 4 warps of 32 x 16: twice the blocks at small M;
//   kMmaPipelined: 64 x 64 tiles, two shared stages: the next K tile's global loads are in
//                  registers while this tile computes, one barrier per tile instead of two.
// blockIdx.z is the split-K part: a range of whole K tiles. Per-group scales are applied where a
// group (or the part) ends: int32 sums over a group, then float.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/launch.hpp"
#include "cuda/w158a8_kernels.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace w158a8 {
namespace {

constexpr int kTileN = 64, kTileK = 64, kThreads = 128;
constexpr int kSmemStride = kTileK + 16;  // bytes per staged row: 16-byte aligned, fewer bank conflicts
static_assert(kSmemStride % 16 == 0, "staged rows must stay 16-byte aligned");
static_assert(kTileK % kGroupAlign == 0, "a K tile is whole scale-group chunks");
static_assert(kBlockK % kTileK == 0, "a K tile never straddles the row padding");
static_assert(kTileK == 64, "split-K parts are counted in 64-weight chunks (cuda/w158a8_kernels.hpp)");

unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

template <int kTileM>
struct TileShape {
  static constexpr int kWarpsM = kTileM / 32, kWarpsN = 4 / kWarpsM;
  static constexpr int kNT = kTileN / kWarpsN / 8;  // n8 tiles per warp
  static_assert(kWarpsM * kWarpsN == kThreads / 32, "4 warps");
};

// Global -> registers for one K tile: kTileM rows of 64 activation bytes (kTileM / 32 int4 per
// thread) and 64 weight rows of 4 words (2 words per thread).
template <int kTileM>
struct TileRegs {
  int4 a[kTileM / 32];
  uint32_t b[2];
};

template <int kTileM>
__device__ __forceinline__ void load_tile(TileRegs<kTileM>& r, const int8_t* __restrict__ q, int64_t m, int64_t kp,
                                          const uint32_t* __restrict__ packed, int64_t n, int64_t wpr, int64_t m0,
                                          int64_t n0, int64_t k0) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kTileM / 32; ++i) {
    const int idx = tid + i * kThreads, row = idx / (kTileK / 16), c16 = idx % (kTileK / 16);
    r.a[i] = m0 + row < m ? *reinterpret_cast<const int4*>(q + (m0 + row) * kp + k0 + c16 * 16) : make_int4(0, 0, 0, 0);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = tid + i * kThreads, row = idx / (kTileK / kCodesPerWord), wj = idx % (kTileK / kCodesPerWord);
    r.b[i] = n0 + row < n ? packed[(n0 + row) * wpr + k0 / kCodesPerWord + wj] : kZeroWord;
  }
}

template <int kTileM>
__device__ __forceinline__ void store_tile(const TileRegs<kTileM>& r, int8_t (*As)[kSmemStride],
                                           int8_t (*Bs)[kSmemStride]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kTileM / 32; ++i) {
    const int idx = tid + i * kThreads, row = idx / (kTileK / 16), c16 = idx % (kTileK / 16);
    *reinterpret_cast<int4*>(&As[row][c16 * 16]) = r.a[i];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = tid + i * kThreads, row = idx / (kTileK / kCodesPerWord), wj = idx % (kTileK / kCodesPerWord);
#pragma unroll
    for (int s = 0; s < 4; ++s) *reinterpret_cast<int*>(&Bs[row][wj * 16 + 4 * s]) = decode4(r.b[i], s);
  }
}

// The two k32 steps of a staged tile for this warp's 32 x (kNT * 8) outputs.
template <int kTileM>
__device__ __forceinline__ void compute_tile(const int8_t (*As)[kSmemStride], const int8_t (*Bs)[kSmemStride],
                                             int (&acc)[2][TileShape<kTileM>::kNT][4]) {
  using S = TileShape<kTileM>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = warp / S::kWarpsN, wn = warp % S::kWarpsN;
#pragma unroll
  for (int kk = 0; kk < kTileK; kk += 32) {
    uint32_t a[2][4], b[S::kNT][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r = wm * 32 + mt * 16 + g;
      a[mt][0] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 4 * t]);
      a[mt][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 4 * t]);
      a[mt][2] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 16 + 4 * t]);
      a[mt][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 16 + 4 * t]);
    }
#pragma unroll
    for (int nt = 0; nt < S::kNT; ++nt) {
      const int r = wn * (S::kNT * 8) + nt * 8 + g;
      b[nt][0] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 4 * t]);
      b[nt][1] = *reinterpret_cast<const uint32_t*>(&Bs[r][kk + 16 + 4 * t]);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < S::kNT; ++nt) mma_s8(acc[mt][nt], a[mt], b[nt]);
  }
}

// Per group: where a group or this part ends, the int32 sums times the group's scales go into the
// float sums. c: accumulator (mt, nt, e) -> output column.
template <int kTileM>
__device__ __forceinline__ void flush_group(int (&acc)[2][TileShape<kTileM>::kNT][4],
                                            float (&accf)[2][TileShape<kTileM>::kNT][4], int64_t n0, int64_t n,
                                            const float* __restrict__ ws, int64_t stride, int64_t gi) {
  using S = TileShape<kTileM>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const int wn = warp % S::kWarpsN;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < S::kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t col = n0 + wn * (S::kNT * 8) + nt * 8 + 2 * t + (e & 1);
        const float sc = col < n ? ws[col * stride + gi] : 0.0f;
        accf[mt][nt][e] += static_cast<float>(acc[mt][nt][e]) * sc;
        acc[mt][nt][e] = 0;
      }
}

template <int kTileM, bool kPipelined, bool kPerGroup>
__global__ void __launch_bounds__(kThreads)
    mma_kernel(const int8_t* __restrict__ q, int64_t m, int64_t k, int64_t kp, const uint32_t* __restrict__ packed,
               const float* __restrict__ ws, int64_t stride, int64_t group, int64_t n, int64_t tiles_per_split,
               Out out) {
  using S = TileShape<kTileM>;
  constexpr int kStages = kPipelined ? 2 : 1;
  __shared__ __align__(16) int8_t As[kStages][kTileM][kSmemStride];
  __shared__ __align__(16) int8_t Bs[kStages][kTileN][kSmemStride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = warp / S::kWarpsN, wn = warp % S::kWarpsN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t wpr = kp / kCodesPerWord;
  const int split = static_cast<int>(blockIdx.z);
  // K tiles holding some k < K only (tiles of the zero padding add nothing and have no scale group).
  const int64_t t_begin = split * tiles_per_split;
  const int64_t t_end = min(live_chunks(k), t_begin + tiles_per_split);

  int acc[2][S::kNT][4];
  float accf[2][S::kNT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < S::kNT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0, accf[a][b][c] = 0.0f;

  TileRegs<kTileM> regs;
  if (kPipelined && t_begin < t_end) {
    load_tile<kTileM>(regs, q, m, kp, packed, n, wpr, m0, n0, t_begin * kTileK);
    store_tile<kTileM>(regs, As[0], Bs[0]);
    __syncthreads();
  }
  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t k0 = tile * kTileK;
    const int stage = kPipelined ? static_cast<int>((tile - t_begin) % 2) : 0;
    if (kPipelined) {
      const bool next = tile + 1 < t_end;
      if (next) load_tile<kTileM>(regs, q, m, kp, packed, n, wpr, m0, n0, k0 + kTileK);
      compute_tile<kTileM>(As[stage], Bs[stage], acc);
      // The other stage was last read before the previous barrier: safe to fill now.
      if (next) store_tile<kTileM>(regs, As[1 - stage], Bs[1 - stage]);
    } else {
      load_tile<kTileM>(regs, q, m, kp, packed, n, wpr, m0, n0, k0);
      store_tile<kTileM>(regs, As[0], Bs[0]);
      __syncthreads();
      compute_tile<kTileM>(As[0], Bs[0], acc);
    }
    __syncthreads();
    if (kPerGroup) {
      const int64_t k_end = k0 + kTileK;
      if (k_end % group == 0 || k_end >= k || tile + 1 == t_end)
        flush_group<kTileM>(acc, accf, n0, n, ws, stride, k0 / group);
    }
  }
  // Epilogue: c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < S::kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm * 32 + mt * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + wn * (S::kNT * 8) + nt * 8 + 2 * t + (e & 1);
        if (row >= m || col >= n) continue;
        if (kPerGroup) {
          emit_float(out, row, col, split, accf[mt][nt][e]);
        } else {
          emit_int(out, row, col, split, acc[mt][nt][e]);
        }
      }
}

template <int kTileM, bool kPipelined>
void launch_tile(const Problem& p, int splits, const Out& out, cudaStream_t stream) {
  const int64_t per_split = chunks_per_split(p.k, splits);
  const dim3 grid(blocks_for(p.n, kTileN), blocks_for(p.m, kTileM), static_cast<unsigned>(splits));
  if (p.per_group) {
    launch(BITQAT_HERE, "mma_kernel", mma_kernel<kTileM, kPipelined, true>, grid, kThreads, stream, p.q, p.m, p.k, p.kp,
           p.packed, p.ws, p.stride, p.group, p.n, per_split, out);
  } else {
    launch(BITQAT_HERE, "mma_kernel", mma_kernel<kTileM, kPipelined, false>, grid, kThreads, stream, p.q, p.m, p.k,
           p.kp, p.packed, p.ws, p.stride, p.group, p.n, per_split, out);
  }
}

}  // namespace

void launch_mma(Kernel kernel, const Problem& p, int splits, const Out& out, cudaStream_t stream) {
  switch (kernel) {
    case Kernel::kMmaSmall:
      launch_tile<32, false>(p, splits, out, stream);
      break;
    case Kernel::kMmaPipelined:
      launch_tile<64, true>(p, splits, out, stream);
      break;
    default:
      launch_tile<64, false>(p, splits, out, stream);
      break;
  }
}

}  // namespace w158a8
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
