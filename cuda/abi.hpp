// The namespace the kernel launchers are compiled into. cuda/*.cu builds twice from one source: with
// nvcc for the GPU (launchers in bitqat::cuda::device) and with the host compiler for the CPU
// harness of cuda/sim/ (BITQAT_CUDA_EMULATED defined: bitqat::cuda::emulated). Both are inline
// namespaces, so callers write bitqat::cuda::w158a8_matmul and get the build they link, while one
// binary can hold both (the ops route CPU tensors to the emulated kernels in tests). Types shared
// by the two (DType, ScaleKind, Launchers) stay outside, in bitqat::cuda itself.
#pragma once

#if defined(BITQAT_CUDA_EMULATED)
#define BITQAT_CUDA_LAUNCHERS_BEGIN inline namespace emulated {
#else
#define BITQAT_CUDA_LAUNCHERS_BEGIN inline namespace device {
#endif
#define BITQAT_CUDA_LAUNCHERS_END }
