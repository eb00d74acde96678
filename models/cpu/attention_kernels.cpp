#include "models/cpu/attention_kernels.hpp"

#include <cstring>

#include "bitlinear/cpu/row_kernels.hpp"

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

const AttentionKernels* attention_kernels_for(const char* isa) {
  // The row kernels' table answers whether this CPU runs the instruction set.
  if (!bitlinear::cpu::row_kernels_for(isa)) return nullptr;
  if (std::strcmp(isa, "avx512") == 0) return &isa_avx512::kKernels;
  if (std::strcmp(isa, "avx2") == 0) return &isa_avx2::kKernels;
  return &isa_default::kKernels;
}

const AttentionKernels& attention_kernels() {
  // The instruction set the row kernels chose from LibTorch's capability (ATEN_CPU_CAPABILITY).
  static const AttentionKernels* chosen = [] {
    const AttentionKernels* k = attention_kernels_for(bitlinear::cpu::row_kernels().isa);
    return k ? k : &isa_default::kKernels;
  }();
  return *chosen;
}

}  // namespace bitqat::models::cpu
