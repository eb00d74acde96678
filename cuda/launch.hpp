// Kernel launches through the CUDA runtime's typed launch API, cudaLaunchKernelEx (CUDA 12+): a
// plain C++ call where `<<<...>>>` is a CUDA language extension. So cuda/*.cu is one source for
// nvcc and for the host compiler of the CPU harness (cuda/sim/), which provides cudaLaunchKernelEx
// itself. Only the .cu files include this header.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "cuda/check.hpp"

namespace bitqat::cuda {

struct SourceLine {
  const char* file;
  int line;
};
#define BITQAT_HERE (::bitqat::cuda::SourceLine{__FILE__, __LINE__})

// Launches kernel(args...) over grid x block threads on stream (no dynamic shared memory) and
// throws std::runtime_error naming `name`, with the launch's file and line, when the launch fails.
// The launch's own return value is the check: a cudaGetLastError() here could also return an error
// an unrelated earlier call left behind.
template <class... Params, class... Args>
void launch(SourceLine at, const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
            Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // the launch set it too; clear it for later, unrelated checks
    throw_cuda_error(err, (std::string("launch of ") + name).c_str(), at.file, at.line);
  }
}

}  // namespace bitqat::cuda
