// CUDA kernels for the harness's own tests (tests/cuda/sim/harness_kernels.hpp); CUDA C++ built by the
// host compiler against cuda/sim/device.hpp, like cuda/*.cu in the harness.
#include "tests/cuda/sim/harness_kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <vector>

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

__global__ void half_warp_exchange_kernel(bool with_sync, int* out) {
  __shared__ int s[32];
  const int t = threadIdx.x, base = t / 16 * 16;
  s[t] = 100 + t;
  if (with_sync) __syncwarp(t < 16 ? 0x0000ffffu : 0xffff0000u);
  out[t] = s[base + (t + 1) % 16];
}

__global__ void syncwarp_two_sites_kernel(int* out) {
  __shared__ int s[32];
  const int t = threadIdx.x;
  s[t] = 200 + t;
  if (t < 16) {
    __syncwarp();
  } else {
    __syncwarp();
  }
  out[t] = s[t ^ 16];
}

__global__ void overlapping_shuffles_kernel(const int* in, int* out) {
  const int t = threadIdx.x;
  int v = in[t];
  if (t < 16) v = __shfl_xor_sync(0x0000ffffu, v, 1);
  v = __shfl_xor_sync(0xffffffffu, v, 16);
  out[t] = v;
}

__global__ void two_site_shuffle_kernel(int* out) {
  const int t = threadIdx.x;
  int v;
  if (t < 16) {
    v = __shfl_xor_sync(0xffffffffu, t, 16);
  } else {
    v = __shfl_xor_sync(0xffffffffu, t, 16);
  }
  out[t] = v;
}

__global__ void mask_disagreement_kernel() {
  const int t = threadIdx.x;
  (void)__shfl_sync(t < 16 ? 0x0000ffffu : 0xffffffffu, t, 0);
}

__global__ void readers_then_write_kernel(int* out) {
  __shared__ int word;
  const int t = threadIdx.x;
  if (t == 0) word = 5;
  __syncthreads();
  out[t] = word;
  __syncwarp();
  if (t == static_cast<int>(blockDim.x) - 1) word = 6;
}

__global__ void spin_kernel(bool volatile_store, bool never_set, int* out) {
  __shared__ int flag;
  const int t = threadIdx.x;
  if (t == 0) flag = 0;
  __syncthreads();
  if (t == 0) {
    int seen;
    while ((seen = *static_cast<volatile int*>(&flag)) == 0) {
    }
    out[0] = seen;
  }
  if (t == 32 && !never_set) {
    if (volatile_store) {
      *static_cast<volatile int*>(&flag) = 7;
    } else {
      flag = 7;
    }
  }
}

__device__ int device_table[64];

__global__ void device_globals_kernel(int* out) { out[threadIdx.x] = device_table[threadIdx.x]; }

__global__ void big_local_kernel(int n, long long* out) {
  int local[1 << 16];
  for (int i = 0; i < n; ++i) local[i] = i;
  long long sum = 0;
  for (int i = 0; i < n; ++i) sum += local[i];
  out[0] = sum;
}

__global__ void huge_local_kernel(long long* out) {
  int local[1 << 18];
  for (int i = 0; i < (1 << 18); ++i) local[i] = i;
  long long sum = 0;
  for (int i = 0; i < (1 << 18); i += 4096) sum += local[i];
  out[0] = sum;
}

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
int half_warp_exchange(bool with_sync, int* out) { return run(half_warp_exchange_kernel, 1, 32, with_sync, out); }
int syncwarp_two_sites(int* out) { return run(syncwarp_two_sites_kernel, 1, 32, out); }
int overlapping_shuffles(const int* in, int* out) { return run(overlapping_shuffles_kernel, 1, 32, in, out); }
int two_site_shuffle(int* out) { return run(two_site_shuffle_kernel, 1, 32, out); }
int mask_disagreement() { return run(mask_disagreement_kernel, 1, 32); }
int readers_then_write(int threads, int* out) { return run(readers_then_write_kernel, 1, threads, out); }
int spin_wait(bool volatile_store, int* out) { return run(spin_kernel, 1, 64, volatile_store, false, out); }
int spin_forever() {
  int out = 0;
  return run(spin_kernel, 1, 64, true, true, &out);
}
int read_device_globals(int threads, int* out) { return run(device_globals_kernel, 1, threads, out); }
int big_local_array(int n, long long* out) {
  if (n > (1 << 16)) return 1;
  return run(big_local_kernel, 1, 1, n, out);
}
int overflow_stack() {
  long long out = 0;
  return run(huge_local_kernel, 1, 1, &out);
}
int mma_missing_lane() {
  std::vector<uint32_t> a(32 * 4), b(32 * 2);
  std::vector<int32_t> c(32 * 4), d(32 * 4);
  return run(mma_kernel, 1, 32, a.data(), b.data(), c.data(), d.data(), 3);
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
