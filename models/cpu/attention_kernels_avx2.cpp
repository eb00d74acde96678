// The attention kernels compiled for the avx2 instruction set (flags in models/CMakeLists.txt).
#define BITQAT_ATTN_NS isa_avx2
#define BITQAT_ATTN_NAME "avx2"
#define BITQAT_ATTN_VWIDTH 8  // floats per vector register
#define BITQAT_ATTN_VREGS 16  // vector registers
#include "models/cpu/attention_kernels_impl.hpp"
