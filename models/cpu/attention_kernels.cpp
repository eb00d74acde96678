#include "models/cpu/attention_kernels.hpp"

#include <ATen/Version.h>

#include "core/cpu_isa.hpp"

namespace bitqat::models::cpu {
namespace isa_default {
extern const AttentionKernels kKernels;
}
namespace isa_avx2 {
extern const AttentionKernels kKernels;
}
namespace isa_avx512 {
extern const AttentionKernels kKernels;
}

bool attention_kernel_supports(int64_t T, int64_t d) {
  return T >= 1 && T <= kMaxSeq && d >= 16 && d <= kMaxHeadDim && d % 16 == 0;
}

int64_t attention_work_floats(int64_t T, int64_t d) {
  const int64_t Tp = (T + 15) / 16 * 16;
  return 2 * d * Tp + 2 * T * Tp + T;
}

const AttentionKernels* attention_kernels_for(core::CpuIsa isa) {
  static const AttentionKernels* const kVariants[] = {&isa_default::kKernels, &isa_avx2::kKernels,
                                                      &isa_avx512::kKernels};
  return core::variant_for(isa, kVariants);
}

const AttentionKernels& attention_kernels() {
  static const AttentionKernels* const chosen = attention_kernels_for(core::kernel_isa(at::get_cpu_capability()));
  return *chosen;
}

}  // namespace bitqat::models::cpu
