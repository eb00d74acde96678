#include "bitlinear/cpu/row_kernels.hpp"

#include <ATen/Version.h>

#include <cstring>
#include <string>

namespace bitqat::bitlinear::cpu {
namespace isa_default {
extern const RowKernels kKernels;
}
namespace isa_avx2 {
extern const RowKernels kKernels;
}
namespace isa_avx512 {
extern const RowKernels kKernels;
}

namespace {

bool cpu_has(const char* isa) {
  if (std::strcmp(isa, "default") == 0) return true;
  if (std::strcmp(isa, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx512") == 0) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

}  // namespace

const RowKernels* row_kernels_for(const char* isa) {
  if (!cpu_has(isa)) return nullptr;
  if (std::strcmp(isa, "avx512") == 0) return &isa_avx512::kKernels;
  if (std::strcmp(isa, "avx2") == 0) return &isa_avx2::kKernels;
  return &isa_default::kKernels;
}

const RowKernels& row_kernels() {
  // LibTorch's capability already honours ATEN_CPU_CAPABILITY and the CPU's features.
  static const RowKernels* chosen = [] {
    const std::string cap = at::get_cpu_capability();
    const char* isa = cap == "AVX512" ? "avx512" : (cap == "AVX2" ? "avx2" : "default");
    const RowKernels* k = row_kernels_for(isa);
    return k ? k : &isa_default::kKernels;
  }();
  return *chosen;
}

}  // namespace bitqat::bitlinear::cpu
