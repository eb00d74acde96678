// CUDA kernels for the harness's own tests (tests/cuda/sim/harness_kernels.hpp); CUDA C++ built by the
// host compiler against cuda/sim/device.hpp, like cuda/*.cu in the harness.
#include "tests/cuda/sim/harness_kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/mma_m16n8k32.hpp"

namespace bitqat::cuda::sim::testing {
namespace {

template <class... P, class... A>
int run(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  return cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...);
}

template <class T>
__global__ void shuffle_kernel(ShuffleMode mode, unsigned mask, const T* in, const unsigned* b, int width, T* out) {
  const int t = threadIdx.x;
  if (!(mask >> (t % 32) & 1u)) return;
  T v = in[t];
  switch (mode) {
    case ShuffleMode::kIdx:
      v = __shfl_sync(mask, v, static_cast<int>(b[t]), width);
      break;
    case ShuffleMode::kUp:
      v = __shfl_up_sync(mask, v, b[t], width);
      break;
    case ShuffleMode::kDown:
      v = __shfl_down_sync(mask, v, b[t], width);
      break;
    case ShuffleMode::kBfly:
      v = __shfl_xor_sync(mask, v, static_cast<int>(b[t]), width);
      break;
  }
  out[t] = v;
}

__global__ void vote_kernel(unsigned mask, const int* pred, unsigned* out, int* any, int* all) {
  const int t = threadIdx.x;
  if (!(mask >> (t % 32) & 1u)) return;
  out[t] = __ballot_sync(mask, pred[t]);
  any[t] = __any_sync(mask, pred[t]);
  all[t] = __all_sync(mask, pred[t]);
}

__global__ void exchange_kernel(bool with_barrier, const int* in, int* out) {
  __shared__ int s[1024];
  const int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
  s[t] = in[base + t];
  if (with_barrier) __syncthreads();
  out[base + t] = s[(t + 1) % n];
}

__global__ void read_unwritten_kernel(bool stale, uint8_t* out) {
  __shared__ uint8_t s[256];
  const int t = threadIdx.x;
  if (stale && blockIdx.x == 0) {
    s[t] = 7;
    return;
  }
  out[t] = s[t];
}

__global__ void counter_kernel(bool with_plain_read, int* out) {
  __shared__ int counter;
  const int t = threadIdx.x;
  if (t == 0) counter = 0;
  __syncthreads();
  atomicAdd(&counter, 1);
  if (with_plain_read && t == 0) out[1] = counter;
  __syncthreads();
  if (t == 0) out[0] = counter;
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void exit_before_barrier_kernel() {
  if (threadIdx.x == 5) return;
  __syncthreads();
}

__global__ void deadlock_kernel() {
  const int t = threadIdx.x;
  if (t < 16) {
    (void)__shfl_xor_sync(0xffffffffu, t, 1);
  } else {
    __syncthreads();
  }
}

__global__ void outside_mask_kernel() { (void)__shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0); }

__global__ void bad_width_kernel() { (void)__shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1, 12); }

__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d, int missing_lane) {
  const int lane = threadIdx.x;
  if (lane == missing_lane) return;
  uint32_t ar[4] = {a[lane * 4], a[lane * 4 + 1], a[lane * 4 + 2], a[lane * 4 + 3]};
  uint32_t br[2] = {b[lane * 2], b[lane * 2 + 1]};
  int cr[4] = {c[lane * 4], c[lane * 4 + 1], c[lane * 4 + 2], c[lane * 4 + 3]};
  sim::mma_m16n8k32_s8(cr, ar, br, __FILE__, __LINE__);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = cr[i];
}

__global__ void order_kernel(int* counter, int* thread_order, int* block_order) {
  const int t = threadIdx.x, blk = blockIdx.x;
  if (t == 0) block_order[blk] = counter[1]++;
  thread_order[blk * blockDim.x + t] = counter[0]++;
}

__global__ void intrinsics_kernel(const int* a, const int* b, const int* c, int n, int* dp4a_out, unsigned* vsub4_out,
                                  const float* f, int nf, int* f2i_out, float* bf16_out) {
  for (int i = 0; i < n; ++i) {
    dp4a_out[i] = __dp4a(a[i], b[i], c[i]);
    vsub4_out[i] = __vsub4(static_cast<unsigned>(a[i]), static_cast<unsigned>(b[i]));
  }
  for (int i = 0; i < nf; ++i) {
    f2i_out[i] = __float2int_rn(f[i]);
    bf16_out[i] = __bfloat162float(__float2bfloat16(f[i]));
  }
}

__global__ void builtins_kernel(int* out) {
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int* o = out + (static_cast<int64_t>(blk) * threads + t) * 6;
  o[0] = threadIdx.x;
  o[1] = threadIdx.y;
  o[2] = threadIdx.z;
  o[3] = blockIdx.x;
  o[4] = blockIdx.y;
  o[5] = blockIdx.z;
}

}  // namespace

int shuffle_int(int threads, ShuffleMode mode, unsigned mask, const int* in, const unsigned* b, int width, int* out) {
  return run(shuffle_kernel<int>, 1, threads, mode, mask, in, b, width, out);
}
int shuffle_float(int threads, ShuffleMode mode, unsigned mask, const float* in, const unsigned* b, int width,
                  float* out) {
  return run(shuffle_kernel<float>, 1, threads, mode, mask, in, b, width, out);
}
int shuffle_double(int threads, ShuffleMode mode, unsigned mask, const double* in, const unsigned* b, int width,
                   double* out) {
  return run(shuffle_kernel<double>, 1, threads, mode, mask, in, b, width, out);
}
int vote(int threads, unsigned mask, const int* pred, unsigned* out, int* any, int* all) {
  return run(vote_kernel, 1, threads, mask, pred, out, any, all);
}
int exchange(int blocks, int threads, bool with_barrier, const int* in, int* out) {
  return run(exchange_kernel, blocks, threads, with_barrier, in, out);
}
int read_unwritten(int threads, bool stale, uint8_t* out) {
  return run(read_unwritten_kernel, stale ? 2 : 1, threads, stale, out);
}
int shared_counter(int threads, bool with_plain_read, int* out) {
  return run(counter_kernel, 1, threads, with_plain_read, out);
}
int divergent_barrier(int threads) { return run(divergent_barrier_kernel, 1, threads); }
int exit_before_barrier(int threads) { return run(exit_before_barrier_kernel, 1, threads); }
int shuffle_barrier_deadlock() { return run(deadlock_kernel, 1, 32); }
int lane_outside_mask() { return run(outside_mask_kernel, 1, 32); }
int bad_width() { return run(bad_width_kernel, 1, 32); }
int mma_missing_lane() {
  static uint32_t a[32 * 4], b[32 * 2];
  static int32_t c[32 * 4], d[32 * 4];
  return run(mma_kernel, 1, 32, a, b, c, d, 3);
}
int mma(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  return run(mma_kernel, 1, 32, a, b, c, d, -1);
}
int run_order(int blocks, int threads, int* thread_order, int* block_order) {
  int counter[2] = {0, 0};
  return run(order_kernel, blocks, threads, counter, thread_order, block_order);
}
int intrinsics(const int* a, const int* b, const int* c, int n, int* dp4a_out, unsigned* vsub4_out, const float* f,
               int nf, int* f2i_out, float* bf16_out) {
  return run(intrinsics_kernel, 1, 1, a, b, c, n, dp4a_out, vsub4_out, f, nf, f2i_out, bf16_out);
}
int builtins(Dim3 grid, Dim3 block, int* out) { return run(builtins_kernel, dim3(grid), dim3(block), out); }

}  // namespace bitqat::cuda::sim::testing
