#include "cuda/w158a8_mma.cu"  // cuda/w158a8_mma.cu as host C++ for the CPU harness (cuda/sim/CMakeLists.txt)
