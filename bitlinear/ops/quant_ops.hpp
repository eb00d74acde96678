// The device kernels of bitlinear's quantization entry points (bitlinear/quant_kernels.hpp): RMSNorm,
// activation and weight codes, and the fused fake-quantization passes of the training path, launched
// from here on the kernels of cuda/quant.hpp (CUDA tensors: the GPU's, on the current stream of their
// device; CPU tensors that a test routes to the CPU harness: the same kernels there, route.hpp).
//
// bitlinear never includes this folder: this file fills bitlinear's DeviceKernels table when the
// program starts, in every program that links bitqat_bitlinear_ops (its CMakeLists makes the linker
// keep this file), so that quantize_weight, the estimators and RMSNorm take CUDA tensors there. The
// operands arrive checked by the entry points of quant_kernels.hpp, which throw c10::Error naming the
// argument and the value found; the launchers' own errors are std::invalid_argument.
#pragma once
#include "bitlinear/quant_kernels.hpp"

namespace bitqat::bitlinear::ops {

// The table registered with kernels::register_device_kernels at start-up.
const kernels::DeviceKernels& device_quant_kernels();

}  // namespace bitqat::bitlinear::ops
