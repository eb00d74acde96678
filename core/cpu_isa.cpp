#include "core/cpu_isa.hpp"

#include <cstdlib>

namespace bitqat::core {

bool default_onednn_max_cpu_isa() {
  if (std::getenv("ONEDNN_MAX_CPU_ISA") != nullptr) return false;
  return ::setenv("ONEDNN_MAX_CPU_ISA", kDefaultOnednnMaxCpuIsa, /*overwrite=*/0) == 0;
}

}  // namespace bitqat::core
