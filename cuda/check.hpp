// CUDA runtime error checks that throw with the file and line (no LibTorch in cuda/).
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace bitqat::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " + cudaGetErrorName(err) +
                           ": " + cudaGetErrorString(err));
}

}  // namespace bitqat::cuda

#define BITQAT_CUDA_CHECK(expr)                                                                               \
  do {                                                                                                        \
    const cudaError_t bitqat_err_ = (expr);                                                                   \
    if (bitqat_err_ != cudaSuccess) ::bitqat::cuda::throw_cuda_error(bitqat_err_, #expr, __FILE__, __LINE__); \
  } while (0)
