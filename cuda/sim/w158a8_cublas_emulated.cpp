#include "cuda/w158a8_cublas.cu"  // cuda/w158a8_cublas.cu as host C++ for the CPU harness (cuda/sim/CMakeLists.txt)
