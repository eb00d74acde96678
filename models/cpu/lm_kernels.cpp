#include "models/cpu/lm_kernels.hpp"

#include <ATen/Version.h>

#include "core/cpu_isa.hpp"

namespace bitqat::models::cpu {
namespace lm_isa_default {
extern const LmKernels kKernels;
}
namespace lm_isa_avx2 {
extern const LmKernels kKernels;
}
namespace lm_isa_avx512 {
extern const LmKernels kKernels;
}

const LmKernels* lm_kernels_for(core::CpuIsa isa) {
  static const LmKernels* const kVariants[] = {&lm_isa_default::kKernels, &lm_isa_avx2::kKernels,
                                               &lm_isa_avx512::kKernels};
  return core::variant_for(isa, kVariants);
}

const LmKernels& lm_kernels() {
  static const LmKernels* const chosen = lm_kernels_for(core::kernel_isa(at::get_cpu_capability()));
  return *chosen;
}

}  // namespace bitqat::models::cpu
