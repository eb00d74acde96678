// The row kernels compiled for the default instruction set (flags in bitlinear/CMakeLists.txt).
#define BITQAT_ROWK_NS isa_default
#define BITQAT_ROWK_NAME "default"
#include "bitlinear/cpu/row_kernels_impl.hpp"
