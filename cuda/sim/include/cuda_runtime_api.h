// Stand-in for the CUDA toolkit's <cuda_runtime_api.h> when cuda/*.cu is compiled for the CPU harness: the targets
// of cuda/sim/CMakeLists.txt search cuda/sim/include/ instead of the toolkit's include directory.
#pragma once
#include "cuda/sim/device.hpp"
