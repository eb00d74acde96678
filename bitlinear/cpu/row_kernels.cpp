#include "bitlinear/cpu/row_kernels.hpp"

#include <ATen/Version.h>

#include "core/cpu_isa.hpp"

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

const RowKernels* row_kernels_for(core::CpuIsa isa) {
  static const RowKernels* const kVariants[] = {&isa_default::kKernels, &isa_avx2::kKernels, &isa_avx512::kKernels};
  return core::variant_for(isa, kVariants);
}

const RowKernels& row_kernels() {
  static const RowKernels* const chosen = row_kernels_for(core::kernel_isa(at::get_cpu_capability()));
  return *chosen;
}

}  // namespace bitqat::bitlinear::cpu
