// Small CUDA kernels that exercise one rule of the CPU harness each (tests/cuda/sim/runtime_test.cpp).
// Built for the harness only (instrumented, like the kernels of cuda/); their launchers take host
// buffers and return the launch's cudaError_t value. Faults throw bitqat::cuda::sim::KernelFault.
#pragma once
#include <cstdint>

#include "cuda/sim/runtime.hpp"

namespace bitqat::cuda::sim::testing {

// One block of `threads` threads; the lanes in `mask` run
//   out[t] = shfl.sync(mode, mask, in[t], b[t], width)
// (out of non-member lanes untouched). int and float versions.
int shuffle_int(int threads, ShuffleMode mode, unsigned mask, const int* in, const unsigned* b, int width, int* out);
int shuffle_float(int threads, ShuffleMode mode, unsigned mask, const float* in, const unsigned* b, int width,
                  float* out);
int shuffle_double(int threads, ShuffleMode mode, unsigned mask, const double* in, const unsigned* b, int width,
                   double* out);

// out[t] = __ballot_sync(mask, pred[t]), any[t] = __any_sync, all[t] = __all_sync (member lanes).
int vote(int threads, unsigned mask, const int* pred, unsigned* out, int* any, int* all);

// Shared-memory exchange: each thread writes s[t] = in[t]; with_barrier: __syncthreads(); then
// out[t] = s[(t + 1) % threads]. Without the barrier it is a data race.
int exchange(int blocks, int threads, bool with_barrier, const int* in, int* out);

// out[t] = s[t] where the block never wrote s: the poison pattern. stale: block 0 writes s first
// and block 1 reads it (a block's shared memory does not carry over).
int read_unwritten(int threads, bool stale, uint8_t* out);

// A shared counter: atomicAdd by every thread, __syncthreads, out[0] = counter. with_plain_read:
// thread 0 reads the counter before the barrier (a race with the other threads' atomics).
int shared_counter(int threads, bool with_plain_read, int* out);

// Faults: barriers at two call sites; a thread that returns before a barrier; a shuffle with lanes
// split between a shuffle and a barrier (deadlock); a lane outside its mask; a bad width;
// mma.sync with lane 3 exited.
int divergent_barrier(int threads);
int exit_before_barrier(int threads);
int shuffle_barrier_deadlock();
int lane_outside_mask();
int bad_width();
int mma_missing_lane();

// Warp-level synchronisation (sm_70 and later semantics). half_warp_exchange: the two half-warps each
// write s[t], take __syncwarp of their own half (when with_sync), then read out[t] = s[their half's
// next lane]. syncwarp_two_sites: lanes 0-15 and 16-31 take __syncwarp(full mask) at two different
// call sites between writing s[t] and reading out[t] = s[t ^ 16]. overlapping_shuffles: lanes 0-15
// run v = shfl_xor(0x0000ffff, v, 1), then every lane v = shfl_xor(full, v, 16); out[t] = v.
// mask_disagreement: one shuffle where lanes 0-15 pass 0x0000ffff and lanes 16-31 0xffffffff (a fault).
int half_warp_exchange(bool with_sync, int* out);
int syncwarp_two_sites(int* out);
int overlapping_shuffles(const int* in, int* out);
int mask_disagreement();
// The two half-warps run out[t] = shfl_xor(full, t, 16) from the two branches of an if.
int two_site_shuffle(int* out);

// `threads` threads (more than a warp) read a shared word (out[t]), take __syncwarp, then the last
// thread overwrites it: a race with the reads of the other warps (no __syncthreads between).
int readers_then_write(int threads, int* out);

// Thread 0 spins on a volatile shared flag until thread 32 sets it to 7 (a volatile store, or a plain
// one when !volatile_store: then a race); out[0] = the flag thread 0 saw. spin_forever: nobody sets it.
int spin_wait(bool volatile_store, int* out);
int spin_forever();

// out[t] = a zero-initialised __device__ array (global memory: never poisoned, not watched for races).
int read_device_globals(int threads, int* out);

// One thread fills a local array of n ints (n * 4 bytes of its stack) with i and returns the sum.
// overflow_stack: the same with a 1 MiB array (more than the fiber's stack).
int big_local_array(int n, long long* out);
int overflow_stack();

// One warp runs mma.sync m16n8k32 on fragments given per lane (a [32][4], b [32][2], c [32][4]
// words); d [32][4] receives each lane's result.
int mma(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d);

// out[t] = the order in which thread t of a block (and block) ran: a global counter taken by each
// thread on start (the scheduler's order, visible).
int run_order(int blocks, int threads, int* thread_order, int* block_order);

// dp4a, vsub4, float2int_rn, bf16 round trip of the inputs (one thread).
int intrinsics(const int* a, const int* b, const int* c, int n, int* dp4a_out, unsigned* vsub4_out, const float* f,
               int nf, int* f2i_out, float* bf16_out);

// A launch with block (bx, by, bz) and grid (gx, gy, gz) that records each thread's built-in
// variables: out[linear thread of linear block] = (threadIdx, blockIdx) packed as 6 ints.
int builtins(Dim3 grid, Dim3 block, int* out);

}  // namespace bitqat::cuda::sim::testing
