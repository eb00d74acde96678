// The attention kernels compiled for the default instruction set (flags in models/CMakeLists.txt).
#define BITQAT_ATTN_NS isa_default
#define BITQAT_ATTN_NAME "default"
#include "models/cpu/attention_kernels_impl.hpp"
