// The attention kernels compiled for the avx512 instruction set (flags in models/CMakeLists.txt).
#define BITQAT_ATTN_NS isa_avx512
#define BITQAT_ATTN_NAME "avx512"
#define BITQAT_ATTN_VWIDTH 16  // floats per vector register
#define BITQAT_ATTN_VREGS 32   // vector registers
#include "models/cpu/attention_kernels_impl.hpp"
