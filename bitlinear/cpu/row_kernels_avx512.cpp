// The row kernels compiled for the avx512 instruction set (flags in bitlinear/CMakeLists.txt).
#define BITQAT_ROWK_NS isa_avx512
#define BITQAT_ROWK_NAME "avx512"
#include "bitlinear/cpu/row_kernels_impl.hpp"
