// The CUDA C++ dialect of cuda/*.cu for the host compiler, with the GPU's semantics, on the harness
// of cuda/sim/runtime.hpp: function qualifiers, __shared__, the built-in variables, the warp and
// block intrinsics, dp4a and the SIMD byte operations, atomics, bf16, vector types and the subset of
// the runtime API the launchers use (cudaLaunchKernelEx, cudaGetLastError). The stand-in toolkit
// headers in cuda/sim/include/ include it, so the kernel sources compile unchanged; only inline PTX
// sits behind #if defined(__CUDA_ARCH__), with a call into the harness in the host branch.
// Never included by code that nvcc compiles.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda/sim/runtime.hpp"

#if defined(__CUDACC__)
#error "cuda/sim/device.hpp is the host compiler's stand-in for the CUDA toolkit; nvcc must not see it"
#endif

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so a function-local static is exactly the block's shared memory: one
// copy per block, visible to all its threads, not thread-local (AddressSanitizer checks statics of
// internal-linkage functions for overflow; it ignores thread-local storage).
#define __shared__ static

// ---- built-in variables and vector types -------------------------------------------------------
using uint3 = ::bitqat::cuda::sim::Dim3;
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit, as in CUDA
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
constexpr int warpSize = 32;
// The running CUDA thread's built-in variables: the scheduler sets them before it resumes a kernel
// thread. Plain globals: the harness runs one launch at a time, and GCC 12 miscompiles
// UndefinedBehaviorSanitizer's null check on extern thread_local variables at -O2.
extern uint3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- math (the device overloads of CUDA's math_functions.hpp the kernels rely on) -----------------
using std::isfinite;
using std::isnan;
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
// rsqrtf: the host's correctly rounded 1/sqrt; the GPU's differs by up to 2 ulp (CUDA C++
// Programming Guide, mathematical functions), which tests of float epilogues allow for.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// cvt.rni.s32.f32: round half to even; NaN gives 0; out-of-range values saturate (PTX ISA, cvt).
inline int __float2int_rn(float x) {
  if (std::isnan(x)) return 0;
  if (x >= 2147483648.0f) return std::numeric_limits<int>::max();
  if (x <= -2147483648.0f) return std::numeric_limits<int>::min();
  return static_cast<int>(std::nearbyint(x));  // the default rounding mode: to nearest, ties to even
}
inline float __int2float_rn(int x) { return static_cast<float>(x); }

// ---- SIMD byte operations and dp4a --------------------------------------------------------------
// dp4a.s32.s32: c + the sum of the four signed byte products, with 32-bit wrap-around.
inline int __dp4a(int a, int b, int c) {
  uint32_t acc = static_cast<uint32_t>(c);
  for (int i = 0; i < 4; ++i) {
    const int ai = static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i));
    const int bi = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    acc += static_cast<uint32_t>(ai * bi);
  }
  return static_cast<int>(acc);
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  uint32_t acc = c;
  for (int i = 0; i < 4; ++i) acc += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
  return acc;
}
// Per-byte a - b and a + b modulo 256.
inline unsigned __vsub4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xffu) << (8 * i);
  return r;
}
inline unsigned __vadd4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) + (b >> (8 * i))) & 0xffu) << (8 * i);
  return r;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// ---- barriers, warp collectives, atomics ----------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::bitqat::cuda::sim::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::bitqat::cuda::sim::syncwarp(mask, file, line);
}

namespace bitqat::cuda::sim {
template <class T>
uint64_t bits_of(T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  if constexpr (sizeof(T) == 4) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
  } else {
    uint64_t b;
    std::memcpy(&b, &v, 8);
    return b;
  }
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  if constexpr (sizeof(T) == 4) {
    const uint32_t w = static_cast<uint32_t>(b);
    std::memcpy(&v, &w, 4);
  } else {
    std::memcpy(&v, &b, 8);
  }
  return v;
}
// NaN for floating point, 0xDEADBEEF (repeated for 64 bits) for integers.
template <class T>
uint64_t poison_of() {
  if constexpr (std::is_floating_point_v<T>) {
    return bits_of(std::numeric_limits<T>::quiet_NaN());
  } else {
    return sizeof(T) == 4 ? 0xDEADBEEFull : 0xDEADBEEFDEADBEEFull;
  }
}
template <class T>
T shfl(ShuffleMode mode, unsigned mask, T var, unsigned b, int width, const char* file, int line) {
  return from_bits<T>(shuffle(mode, mask, bits_of(var), b, width, poison_of<T>(), file, line));
}
}  // namespace bitqat::cuda::sim

// The shuffles for the types CUDA overloads them for; narrower integers convert to int, as in CUDA.
#define BITQAT_SIM_SHUFFLES(T)                                                                                        \
  inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, const char* file = __builtin_FILE(), \
                       int line = __builtin_LINE()) {                                                                 \
    return ::bitqat::cuda::sim::shfl(::bitqat::cuda::sim::ShuffleMode::kIdx, mask, var,                               \
                                     static_cast<unsigned>(src_lane), width, file, line);                             \
  }                                                                                                                   \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,                                 \
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {                         \
    return ::bitqat::cuda::sim::shfl(::bitqat::cuda::sim::ShuffleMode::kUp, mask, var, delta, width, file, line);     \
  }                                                                                                                   \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,                               \
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {                       \
    return ::bitqat::cuda::sim::shfl(::bitqat::cuda::sim::ShuffleMode::kDown, mask, var, delta, width, file, line);   \
  }                                                                                                                   \
  inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,                                 \
                           const char* file = __builtin_FILE(), int line = __builtin_LINE()) {                        \
    return ::bitqat::cuda::sim::shfl(::bitqat::cuda::sim::ShuffleMode::kBfly, mask, var,                              \
                                     static_cast<unsigned>(lane_mask), width, file, line);                            \
  }
BITQAT_SIM_SHUFFLES(int)
BITQAT_SIM_SHUFFLES(unsigned)
BITQAT_SIM_SHUFFLES(long)
BITQAT_SIM_SHUFFLES(unsigned long)
BITQAT_SIM_SHUFFLES(long long)
BITQAT_SIM_SHUFFLES(unsigned long long)
BITQAT_SIM_SHUFFLES(float)
BITQAT_SIM_SHUFFLES(double)
#undef BITQAT_SIM_SHUFFLES
inline unsigned __activemask() { return ::bitqat::cuda::sim::active_mask(); }
// Memory fences: one block runs at a time and its threads take turns, so every write is seen by the
// next thread that runs; a fence orders nothing more here.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return ::bitqat::cuda::sim::ballot(mask, predicate != 0, file, line);
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bitqat::cuda::sim::ballot(mask, predicate != 0, file, line) != 0;
}
// vote.all: the predicate holds on every non-exited lane of the mask (inactive lanes do not count).
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bitqat::cuda::sim::ballot(mask, predicate == 0, file, line) == 0;
}

namespace bitqat::cuda::sim {
template <class T, class F>
uint32_t apply_op(uint32_t old, uint32_t operand) {
  return static_cast<uint32_t>(bits_of(F{}(from_bits<T>(old), from_bits<T>(operand))));
}
template <class T, class F>
T atomic(T* address, T operand, const char* file, int line) {
  static_assert(sizeof(T) == 4, "4-byte atomics");
  return from_bits<T>(atomic_rmw(address, &apply_op<T, F>, static_cast<uint32_t>(bits_of(operand)), file, line));
}
struct OrOp {
  template <class T>
  T operator()(T a, T b) const {
    return a | b;
  }
};
struct AndOp {
  template <class T>
  T operator()(T a, T b) const {
    return a & b;
  }
};
struct AddOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));  // wraps, as on the GPU
    } else {
      return a + b;
    }
  }
};
struct MaxOp {
  template <class T>
  T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct MinOp {
  template <class T>
  T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};
struct ExchOp {
  template <class T>
  T operator()(T, T b) const {
    return b;
  }
};
}  // namespace bitqat::cuda::sim

#define BITQAT_SIM_ATOMIC(name, op, type)                                                                       \
  inline type name(type* address, type val, const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    return ::bitqat::cuda::sim::atomic<type, ::bitqat::cuda::sim::op>(address, val, file, line);                \
  }
BITQAT_SIM_ATOMIC(atomicOr, OrOp, int)
BITQAT_SIM_ATOMIC(atomicOr, OrOp, unsigned)
BITQAT_SIM_ATOMIC(atomicAnd, AndOp, int)
BITQAT_SIM_ATOMIC(atomicAnd, AndOp, unsigned)
BITQAT_SIM_ATOMIC(atomicAdd, AddOp, int)
BITQAT_SIM_ATOMIC(atomicAdd, AddOp, unsigned)
BITQAT_SIM_ATOMIC(atomicAdd, AddOp, float)
BITQAT_SIM_ATOMIC(atomicMax, MaxOp, int)
BITQAT_SIM_ATOMIC(atomicMax, MaxOp, unsigned)
BITQAT_SIM_ATOMIC(atomicMin, MinOp, int)
BITQAT_SIM_ATOMIC(atomicMin, MinOp, unsigned)
BITQAT_SIM_ATOMIC(atomicExch, ExchOp, int)
BITQAT_SIM_ATOMIC(atomicExch, ExchOp, unsigned)
BITQAT_SIM_ATOMIC(atomicExch, ExchOp, float)
#undef BITQAT_SIM_ATOMIC

// ---- bf16 (cuda_bf16.h) ---------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t x;
};
// Round to nearest even; NaN stays a (quiet) NaN.
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- the runtime API subset (cuda_runtime_api.h / cuda_runtime.h) --------------------------------
typedef struct CUstream_st* cudaStream_t;  // the toolkit's own type, so launcher signatures match it
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

inline cudaError_t cudaGetLastError() {
  const auto e = static_cast<cudaError_t>(::bitqat::cuda::sim::last_error());
  ::bitqat::cuda::sim::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return static_cast<cudaError_t>(::bitqat::cuda::sim::last_error()); }
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorInvalidConfiguration ? "invalid configuration argument (CPU harness)" : cudaGetErrorName(e);
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }  // launches run to completion
// One device, the harness: its name keys cuda/dispatch.hpp's table (no row names it).
struct cudaDeviceProp {
  char name[256];
  int multiProcessorCount;
};
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  std::snprintf(prop->name, sizeof prop->name, "%s", "CPU harness");
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  void* attrs;
  unsigned int numAttrs;
};

// The runtime's typed launch: the arguments are converted to the kernel's parameter types once, as
// cudaLaunchKernelEx does, and every thread calls the kernel with them. The grid runs to completion
// before this returns. A fault the harness finds throws bitqat::cuda::sim::KernelFault.
template <typename... ExpTypes, typename... ActTypes>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(ExpTypes...), ActTypes&&... args) {
  if (config == nullptr || kernel == nullptr || config->dynamicSmemBytes != 0) {
    ::bitqat::cuda::sim::last_error() = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  struct Closure {
    void (*kernel)(ExpTypes...);
    std::tuple<ExpTypes...> args;
  } closure{kernel, std::tuple<ExpTypes...>(std::forward<ActTypes>(args)...)};
  const auto body = [](void* p) {
    auto* c = static_cast<Closure*>(p);
    std::apply(c->kernel, c->args);
  };
  const int err = ::bitqat::cuda::sim::launch(config->gridDim, config->blockDim, body, &closure);
  if (err != cudaSuccess) ::bitqat::cuda::sim::last_error() = err;
  return static_cast<cudaError_t>(err);
}
