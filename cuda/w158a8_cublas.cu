// The cuBLAS candidate of the W1.58A8 matmul (per tensor / per channel): the packed weights expanded
// once to int8 [N, Kp] (expand_kernel; the caller keeps them for as long as the weights do not change,
// e.g. one optimizer step), cuBLAS's int8 GEMM (cublasGemmEx, s8 x s8 -> s32: IMMA tensor cores),
// then the scale epilogue (epilogue_kernel). Also the split-K reduction the other kernels use.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/launch.hpp"
#include "cuda/w158a8_kernels.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace w158a8 {
namespace {

constexpr int kElementwise = 256;
unsigned blocks(int64_t items) { return static_cast<unsigned>((items + kElementwise - 1) / kElementwise); }

// One thread per packed word: 16 codes to 16 int8 bytes.
__global__ void expand_kernel(const uint32_t* __restrict__ packed, int64_t words, int8_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= words) return;
  const uint32_t w = packed[i];
  int* o = reinterpret_cast<int*>(out + i * kCodesPerWord);
#pragma unroll
  for (int s = 0; s < 4; ++s) o[s] = decode4(w, s);
}

__global__ void epilogue_kernel(const int32_t* __restrict__ sums, int64_t m, int64_t n, Out out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  emit_int(out, i / n, i % n, 0, sums[i]);
}

// Adds the parts in part order: the int32 sums exactly, the per-group floats in a fixed order.
template <bool kPerGroup>
__global__ void reduce_kernel(const void* __restrict__ partial, int64_t m, int64_t n, int splits, Out out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  if (kPerGroup) {
    const float* p = static_cast<const float*>(partial);
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) total += p[s * m * n + i];
    emit_float(out, i / n, i % n, 0, total);
  } else {
    const int32_t* p = static_cast<const int32_t*>(partial);
    uint32_t total = 0;  // int32 arithmetic that wraps as the kernels' does
    for (int s = 0; s < splits; ++s) total += static_cast<uint32_t>(p[s * m * n + i]);
    emit_int(out, i / n, i % n, 0, static_cast<int32_t>(total));
  }
}

// A cuBLAS handle per host thread and device, made on first use.
cublasHandle_t handle() {
  int device = 0;
  BITQAT_CUDA_CHECK(cudaGetDevice(&device));
  static thread_local cublasHandle_t handles[64] = {};
  if (device < 0 || device >= 64) throw std::runtime_error("cuBLAS int8 GEMM: device index out of range");
  if (!handles[device]) {
    const cublasStatus_t st = cublasCreate(&handles[device]);
    if (st != CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error(std::string("cublasCreate: ") + cublasGetStatusString(st));
    }
  }
  return handles[device];
}

}  // namespace

void launch_expand(const uint32_t* packed, int64_t n, int64_t kp, int8_t* expanded, cudaStream_t stream) {
  const int64_t words = n * (kp / kCodesPerWord);
  launch(BITQAT_HERE, "expand_kernel", expand_kernel, blocks(words), kElementwise, stream, packed, words, expanded);
}

void launch_epilogue(const int32_t* sums, const Problem& p, const Out& out, cudaStream_t stream) {
  launch(BITQAT_HERE, "epilogue_kernel", epilogue_kernel, blocks(p.m * p.n), kElementwise, stream, sums, p.m, p.n, out);
}

void launch_reduce(const void* partial, const Problem& p, int splits, const Out& out, cudaStream_t stream) {
  if (p.per_group) {
    launch(BITQAT_HERE, "reduce_kernel", reduce_kernel<true>, blocks(p.m * p.n), kElementwise, stream, partial, p.m,
           p.n, splits, out);
  } else {
    launch(BITQAT_HERE, "reduce_kernel", reduce_kernel<false>, blocks(p.m * p.n), kElementwise, stream, partial, p.m,
           p.n, splits, out);
  }
}

// Column-major, as cuBLAS sees it: C (N x M) = W^T' ... i.e. with the row-major buffers W [N, Kp],
// q [M, Kp] and y [M, N]: C = op(A) op(B) with A = W viewed as Kp x N (lda Kp) transposed, B = q
// viewed as Kp x M (ldb Kp), C = y viewed as N x M (ldc N). Transposed A, plain B is the layout the
// int8 GEMM requires; Kp is a multiple of 128, so the leading dimensions are multiples of 4 as well.
void launch_cublas_int8(const Problem& p, const int8_t* expanded, int32_t* y_int, cudaStream_t stream) {
  if (p.n > INT32_MAX || p.m > INT32_MAX || p.kp > INT32_MAX) {
    throw std::invalid_argument("cuBLAS int8 GEMM: M, N and Kp must fit in int32");
  }
  const cublasHandle_t h = handle();
  cublasStatus_t st = cublasSetStream(h, stream);
  const int32_t alpha = 1, beta = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.kp),
                      &alpha, expanded, CUDA_R_8I, static_cast<int>(p.kp), p.q, CUDA_R_8I, static_cast<int>(p.kp),
                      &beta, y_int, CUDA_R_32I, static_cast<int>(p.n), CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT);
  }
  if (st != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS int8 GEMM (cublasGemmEx, s8 x s8 -> s32): ") +
                             cublasGetStatusString(st));
  }
}

}  // namespace w158a8
BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
