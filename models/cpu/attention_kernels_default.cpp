// The attention kernels compiled for the default instruction set (flags in models/CMakeLists.txt).
#define BITQAT_ATTN_NS isa_default
#define BITQAT_ATTN_NAME "default"
#define BITQAT_ATTN_VWIDTH 4  // floats per vector register
#define BITQAT_ATTN_VREGS 16  // vector registers
#include "models/cpu/attention_kernels_impl.hpp"
