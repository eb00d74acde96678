// Copies of kernels of cuda/ with one planted fault each, to show that the CPU harness catches every
// fault class (tests/cuda/sim/planted_faults_test.cpp). They live here, never in cuda/. Host
// buffers; faults throw bitqat::cuda::sim::KernelFault (or, out of bounds, stop the process under
// AddressSanitizer).
#pragma once
#include <cstdint>

namespace bitqat::cuda::sim::faults {

// cuda/quant.cu quantize_rows_kernel (float32, no norm) whose code loop runs `j <= ldq` instead of
// `j < ldq`: it writes one code past each row, past the buffer's end for the last row (out of bounds).
void quantize_rows_past_the_row(const float* x, int64_t m, int64_t k, int64_t ldq, int8_t* q, float* scales);

// cuda/quant.cu rms_norm_kernel whose block sum lacks the __syncthreads after each thread stores its
// partial sum (a data race on the shared partials).
void rms_norm_without_barrier(const float* x, int64_t m, int64_t k, float* y);

// cuda/w158a8.cu gemm_kernel (raw int32 output) loading the A fragment's second register from row
// groupID instead of groupID + 8 (a wrong fragment layout: wrong sums, no fault).
void gemm_with_wrong_fragment(const int8_t* q, int64_t m, int64_t k, const uint32_t* packed, int64_t n, int32_t* y_int);

// cuda/quant.cu tensor_scale_kernel whose block absmax shuffles only in lanes < 16 (the shuffle
// inside a lane-dependent branch: divergence).
void tensor_scale_with_divergent_shuffle(const float* x, int64_t n, float* scale);

// For the sanitizer build: cuda/w158a8.cu's GEMV 16-byte weight load, reading one chunk past a
// packed row of `words` words (a vector over-read at the tensor's end); decode4 with the shift of its
// fifth byte lane (2 * 16 = 32, a shift of the word's full width); and a row offset computed in int32
// (blockIdx.x * k overflows for k = 2^30 in block 2).
void vector_over_read(const uint32_t* packed, int64_t words, int32_t* out);
void decode_with_full_width_shift(uint32_t word, int32_t* out);
void int32_row_offset(int64_t k, int32_t* out);

// cuda/quant.cu tensor_scale_kernel whose warp leaders store their maximum one slot further on,
// the last warp's past the shared partials (out of bounds in shared memory).
void tensor_scale_past_the_partials(const float* x, int64_t n, float* scale);

}  // namespace bitqat::cuda::sim::faults
