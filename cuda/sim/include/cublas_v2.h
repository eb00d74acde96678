// Stand-in for the CUDA toolkit's <cublas_v2.h> when cuda/*.cu is compiled for the CPU harness: the
// calls cuda/ makes (a handle, its stream, cublasGemmEx for s8 x s8 -> s32), computed on the host
// with cuBLAS's column-major semantics (cuBLAS documentation, cublasGemmEx):
//   C = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n, C m x n, element (i, j) of a column-major
//   matrix X with leading dimension ldx at X[i + j * ldx].
// Sums are int32 with wrap-around. Other types, compute types or int8 layouts than transposed A and
// plain B (what cuBLAS's int8 GEMM requires) return CUBLAS_STATUS_NOT_SUPPORTED.
#pragma once
#include <cstdint>

#include "cuda/sim/device.hpp"

typedef struct cublasContext* cublasHandle_t;
typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_8I = 3, CUDA_R_32I = 10 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32I = 72 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

struct cublasContext {
  cudaStream_t stream = nullptr;
};

inline cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
inline const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

inline cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                   int n, int k, const void* alpha, const void* A, cudaDataType Atype, int lda,
                                   const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                                   cudaDataType Ctype, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (Atype != CUDA_R_8I || Btype != CUDA_R_8I || Ctype != CUDA_R_32I || compute != CUBLAS_COMPUTE_32I ||
      transa != CUBLAS_OP_T || transb != CUBLAS_OP_N) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m < 0 || n < 0 || k < 0 || lda < k || ldb < k || ldc < m) return CUBLAS_STATUS_INVALID_VALUE;
  const auto* a = static_cast<const int8_t*>(A);  // op(A) = A^T: A is k x m, element (p, i) at a[p + i * lda]
  const auto* b = static_cast<const int8_t*>(B);  // B is k x n, element (p, j) at b[p + j * ldb]
  auto* c = static_cast<int32_t*>(C);
  const uint32_t al = static_cast<uint32_t>(*static_cast<const int32_t*>(alpha));
  const uint32_t be = static_cast<uint32_t>(*static_cast<const int32_t*>(beta));
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      uint32_t acc = 0;
      for (int p = 0; p < k; ++p) {
        acc += static_cast<uint32_t>(int32_t{a[p + static_cast<int64_t>(i) * lda]} *
                                     int32_t{b[p + static_cast<int64_t>(j) * ldb]});
      }
      int32_t& out = c[i + static_cast<int64_t>(j) * ldc];
      out = static_cast<int32_t>(al * acc + (be == 0 ? 0u : be * static_cast<uint32_t>(out)));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
