#include "cuda/w158a8_gemv.cu"  // cuda/w158a8_gemv.cu as host C++ for the CPU harness (cuda/sim/CMakeLists.txt)
