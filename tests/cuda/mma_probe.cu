// The real mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 on a GPU, for the check of the fragment
// table (tests/cuda/mma_m16n8k32_test.cpp). One warp; each lane's registers come straight from the
// arrays, so the instruction alone decides where each byte goes.
#include <cuda_runtime.h>

#include "tests/cuda/mma_probe.hpp"

namespace bitqat::cuda::testing {
namespace {

__global__ void probe_kernel(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  const int lane = threadIdx.x;
  int acc[4] = {c[lane * 4], c[lane * 4 + 1], c[lane * 4 + 2], c[lane * 4 + 3]};
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
               : "r"(a[lane * 4]), "r"(a[lane * 4 + 1]), "r"(a[lane * 4 + 2]), "r"(a[lane * 4 + 3]), "r"(b[lane * 2]),
                 "r"(b[lane * 2 + 1]));
#endif
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

}  // namespace

bool gpu_present() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::string run_mma_probe(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  uint32_t *da = nullptr, *db = nullptr;
  int32_t *dc = nullptr, *dd = nullptr;
  cudaError_t e = cudaMalloc(&da, 32 * 4 * 4);
  if (e == cudaSuccess) e = cudaMalloc(&db, 32 * 2 * 4);
  if (e == cudaSuccess) e = cudaMalloc(&dc, 32 * 4 * 4);
  if (e == cudaSuccess) e = cudaMalloc(&dd, 32 * 4 * 4);
  if (e == cudaSuccess) e = cudaMemcpy(da, a, 32 * 4 * 4, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaMemcpy(db, b, 32 * 2 * 4, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaMemcpy(dc, c, 32 * 4 * 4, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) {
    probe_kernel<<<1, 32>>>(da, db, dc, dd);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpy(d, dd, 32 * 4 * 4, cudaMemcpyDeviceToHost);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  cudaFree(dd);
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

}  // namespace bitqat::cuda::testing
