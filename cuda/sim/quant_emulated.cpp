#include "cuda/quant.cu"  // cuda/quant.cu as host C++ for the CPU harness (cuda/sim/CMakeLists.txt)
