// The language model's kernels compiled for the avx2 instruction set (flags in models/CMakeLists.txt).
#define BITQAT_LMK_NS lm_isa_avx2  // not isa_avx2: the attention kernels' tables live there
#define BITQAT_LMK_NAME "avx2"
#include "models/cpu/lm_kernels_impl.hpp"
