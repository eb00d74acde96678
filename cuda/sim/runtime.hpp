// The CPU harness that runs the CUDA kernels of cuda/ from their own source (tests only). Every CUDA
// thread is a fiber (Boost.Context); one block runs at a time, to completion, inside the launch.
// The CUDA dialect the kernels are written in (built-in variables, __syncthreads, shuffles, dp4a,
// atomics, __shared__, cudaLaunchKernelEx) is cuda/sim/device.hpp, built on the functions below;
// tests use the options, the fault type and the statistics. docs/kernels.md says what it checks
// and what it cannot.
//
// Execution model:
//   - a thread runs until it waits (at __syncthreads, a warp collective) or exits; the scheduler
//     then resumes the next runnable thread in the chosen order (index, reverse, or a seeded shuffle
//     drawn anew for every barrier interval and for the block order). A volatile read lets the
//     others run first (a spin-wait on a flag another thread sets ends);
//   - __syncthreads releases when every thread of the block that has not exited waits at one. Waits
//     at different call sites, a barrier reached after some thread has exited, and a state where
//     nothing can run (deadlock) are faults, reported with the file:line of each wait;
//   - a warp is 32 consecutive linear thread ids. A shuffle, vote or __syncwarp releases when every
//     non-exited lane of its member mask waits at the same operation with the same mask (PTX
//     shfl.sync, vote.sync, bar.warp.sync on sm_70 and later, the targets here: the call sites may
//     differ, though by default lanes that meet at a shuffle or vote from different call sites are a
//     fault, Options::same_site_collectives); lanes that never meet deadlock, which is the report. Lanes at one call
//     site that disagree about the mask, a lane outside its own mask and a bad width are faults. Shuffles follow PTX
//     shfl.sync (segment mask for `width`, an out-of-range source lane returns the caller's own value, an inactive or
//     non-member source gives a poison value: NaN, or 0xDEADBEEF for integers). mma.sync.aligned needs all 32 lanes at
//     the same instruction;
//   - __shared__ variables are function-local statics: per block (one block runs at a time), not
//     thread-local. In the instrumented build a shared byte that the block reads before writing it
//     reads `Options::poison` (set just before the read), so a result that depends on uninitialised
//     shared memory changes with the pattern;
//   - every shared-memory access of the instrumented build goes through a shadow record (last writer;
//     the warps that read it in the current barrier interval and its last 4 readers; program
//     counters). A write and another thread's access in the same barrier interval is a data race
//     unless both lanes are in one warp and a __syncwarp they both took part in lies between (vector
//     clocks over the warp's lanes). Atomics and volatile accesses are strong operations in the PTX memory
//     model (volatile is relaxed at system scope): they race with plain accesses, not with each other. Reports
//     name both threads and both source lines. Deterministic; no TSan runtime. Shared memory is the
//     executable's function-local statics (its symbol table; without one, all zero-initialised data);
//     copies through memcpy / memset are not watched.
//
// Faults are collected during the launch; the launch then throws KernelFault with all reports.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bitqat::cuda::sim {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The order in which runnable threads (and blocks) are resumed.
enum class Order { kIndex, kReverse, kShuffle };

struct Options {
  Order order = Order::kIndex;
  uint64_t seed = 1;      // kShuffle: seeds the permutations
  uint8_t poison = 0xA5;  // the byte an uninitialised shared-memory read returns
  // Lanes that meet at a shuffle or vote from different call sites are a fault ("divergent"). PTX
  // allows it on sm_70 and later (shfl.sync and vote.sync wait for the same operation and mask, not
  // the same instruction), but in this project's kernels it only arises from divergence by mistake;
  // false follows PTX. __syncwarp always follows PTX; mma.sync.aligned always needs one instruction.
  bool same_site_collectives = true;
};

Options options();
void set_options(const Options& options);

// Sets options for its lifetime, then restores the previous ones.
class ScopedOptions {
 public:
  explicit ScopedOptions(const Options& options);
  ~ScopedOptions();
  ScopedOptions(const ScopedOptions&) = delete;
  ScopedOptions& operator=(const ScopedOptions&) = delete;

 private:
  Options saved_;
};

// What a launch found: data races, divergent barriers or collectives, deadlocks, bad collective
// arguments. what() holds every report (at most a few dozen, then a count).
class KernelFault : public std::runtime_error {
 public:
  explicit KernelFault(const std::string& reports) : std::runtime_error(reports) {}
};

// Counters since the last reset_stats(): what the harness saw, so that tests can show a check ran.
struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0;
  uint64_t switches = 0;             // fiber switches into kernel threads
  uint64_t shared_accesses = 0;      // instrumented build only
  uint64_t uninitialised_reads = 0;  // shared bytes read before the block wrote them (poisoned)
  uint64_t collectives = 0, barriers = 0, mma = 0;
};
Stats stats();
void reset_stats();

// Whether shared-memory accesses are instrumented in this build (races and poisoning; the sanitizer
// build has AddressSanitizer's checks instead).
bool instrumented();

// ---- the entry points of cuda/sim/device.hpp -------------------------------------------------

// The calling CUDA thread's built-in variables (only inside an emulated kernel).
struct ThreadContext {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadContext& context();

// Runs body() as every thread of a grid x block launch; returns a cudaError_t value (0 on success,
// 9 cudaErrorInvalidConfiguration for dimensions outside the CUDA limits). Throws KernelFault.
int launch(Dim3 grid, Dim3 block, void (*body)(void*), void* closure);

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);

enum class ShuffleMode { kIdx, kUp, kDown, kBfly };
// One lane's shfl.sync of a 32- or 64-bit value (the bits of `value`); poison is returned when the
// source lane is inactive or outside the mask.
uint64_t shuffle(ShuffleMode mode, unsigned mask, uint64_t value, unsigned b, int width, uint64_t poison,
                 const char* file, int line);
// __ballot_sync: bit l set when lane l (in mask) has a non-zero predicate.
unsigned ballot(unsigned mask, bool predicate, const char* file, int line);
// __activemask: the lanes of the caller's warp that exist and have not exited.
unsigned active_mask();

// The host thread's last launch error (a cudaError_t value), as the CUDA runtime keeps it.
int& last_error();

// Atomic read-modify-write of a 4-byte word: fn(old) is stored, old returned. Recorded as an atomic
// access (atomics do not race with each other, but do with plain accesses).
uint32_t atomic_rmw(void* address, uint32_t (*fn)(uint32_t old, uint32_t operand), uint32_t operand, const char* file,
                    int line);

}  // namespace bitqat::cuda::sim
