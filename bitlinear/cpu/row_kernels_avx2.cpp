// The row kernels compiled for the avx2 instruction set (flags in bitlinear/CMakeLists.txt).
#define BITQAT_ROWK_NS isa_avx2
#define BITQAT_ROWK_NAME "avx2"
#include "bitlinear/cpu/row_kernels_impl.hpp"
