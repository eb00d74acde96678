#include "core/cpu_isa.hpp"

#include <cstdlib>

namespace bitqat::core {

const char* to_string(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kDefault:
      return "default";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "?";
}

bool cpu_runs(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kDefault:
      return true;
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

CpuIsa kernel_isa(const std::string& aten_capability) {
  const CpuIsa isa = aten_capability == "AVX512" ? CpuIsa::kAvx512
                     : aten_capability == "AVX2" ? CpuIsa::kAvx2
                                                 : CpuIsa::kDefault;
  return cpu_runs(isa) ? isa : CpuIsa::kDefault;
}

bool default_onednn_max_cpu_isa() {
  if (std::getenv("ONEDNN_MAX_CPU_ISA") != nullptr) return false;
  return ::setenv("ONEDNN_MAX_CPU_ISA", kDefaultOnednnMaxCpuIsa, /*overwrite=*/0) == 0;
}

}  // namespace bitqat::core
