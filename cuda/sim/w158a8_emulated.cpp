#include "cuda/w158a8.cu"  // cuda/w158a8.cu as host C++ for the CPU harness (cuda/sim/CMakeLists.txt)
