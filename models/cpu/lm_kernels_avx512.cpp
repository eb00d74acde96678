// The language model's kernels compiled for the avx512 instruction set (flags in models/CMakeLists.txt).
#define BITQAT_LMK_NS lm_isa_avx512  // not isa_avx512: the attention kernels' tables live there
#define BITQAT_LMK_NAME "avx512"
#include "models/cpu/lm_kernels_impl.hpp"
