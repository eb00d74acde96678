// The language model's kernels compiled for the default instruction set (flags in models/CMakeLists.txt).
#define BITQAT_LMK_NS lm_isa_default  // not isa_default: the attention kernels' tables live there
#define BITQAT_LMK_NAME "default"
#include "models/cpu/lm_kernels_impl.hpp"
