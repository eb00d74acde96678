// Every kernel launcher of cuda/ as one table of function pointers, so that a caller can pick at run
// time which build runs a launch: the GPU's (launchers(), nvcc) or the CPU harness's
// (bitqat::cuda::emulated::launchers(), cuda/sim/). The signatures are those of cuda/quant.hpp and
// cuda/w158a8.hpp, where each launcher's layout, units and errors are documented.
#pragma once
#include "cuda/abi.hpp"
#include "cuda/quant.hpp"
#include "cuda/w158a8.hpp"

namespace bitqat::cuda {

struct Launchers {
  const char* name;  // "device" or "emulated"
  decltype(&::bitqat::cuda::rms_norm_rows) rms_norm_rows;
  decltype(&::bitqat::cuda::quantize_rows) quantize_rows;
  decltype(&::bitqat::cuda::quantize_tensor) quantize_tensor;
  decltype(&::bitqat::cuda::weight_scales) weight_scales;
  decltype(&::bitqat::cuda::weight_codes) weight_codes;
  decltype(&::bitqat::cuda::pack_codes) pack_codes;
  decltype(&::bitqat::cuda::act_fake_quant) act_fake_quant;
  decltype(&::bitqat::cuda::act_ste_backward) act_ste_backward;
  decltype(&::bitqat::cuda::ternary_fake_quant) ternary_fake_quant;
  decltype(&::bitqat::cuda::quantize_activations) quantize_activations;
  decltype(&::bitqat::cuda::quantize_pack_ternary) quantize_pack_ternary;
  decltype(&::bitqat::cuda::w158a8_matmul) w158a8_matmul;
  decltype(&::bitqat::cuda::w158a8_matmul_int32) w158a8_matmul_int32;
  decltype(&::bitqat::cuda::w158a8_matmul_plan) w158a8_matmul_plan;
  decltype(&::bitqat::cuda::w158a8_matmul_int32_plan) w158a8_matmul_int32_plan;
  decltype(&::bitqat::cuda::w158a8_linear_m1) w158a8_linear_m1;
  decltype(&::bitqat::cuda::expand_packed) expand_packed;
  decltype(&::bitqat::cuda::current_device_name) current_device_name;
};

BITQAT_CUDA_LAUNCHERS_BEGIN
// The launchers of this build (device: the GPU kernels; emulated: the same kernels on the CPU).
const Launchers& launchers();
BITQAT_CUDA_LAUNCHERS_END

}  // namespace bitqat::cuda
