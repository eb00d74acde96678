// LibTorch-facing W1.58A8 ops: int8 per-token activation quantization, ternary quantize-and-pack,
// and the packed matmul. CUDA tensors run the kernels of cuda/w158a8.hpp on the current stream;
// CPU tensors run the scalar references of cuda/reference.hpp (the same results, slowly), or, when a
// test routes them there (route.hpp set_cpu_launchers), the same CUDA kernels on the CPU harness of
// cuda/sim/.
#pragma once
#include <ATen/ATen.h>

#include "bitlinear/ops/route.hpp"
#include "bitlinear/quantizers.hpp"
#include "cuda/launchers.hpp"
#include "cuda/ternary_format.hpp"

namespace bitqat::bitlinear::ops {

struct QuantizedTokens {
  at::Tensor q;       // int8 [M, Kp], zero padded past K
  at::Tensor scales;  // float32 [M]; x ~= q / scale
  int64_t k = 0;
};

struct PackedTernary {
  at::Tensor packed;  // int32 [N, Kp / 16] holding the uint32 words of cuda/ternary_format.hpp
  at::Tensor scales;  // float32: [1], [N] or [N, groups]
  cuda::ScaleKind kind = cuda::ScaleKind::kPerTensor;
  int64_t group = 0;  // group size (kPerGroup)
  int64_t n = 0, k = 0;
  // The codes as int8 [N, Kp] on the packed words' device, made on first use by a kernel that reads
  // bytes (cuBLAS's int8 GEMM) and kept with them: once per set of weights, e.g. per optimizer step.
  mutable at::Tensor expanded;
  int64_t bytes() const { return packed.numel() * 4 + scales.numel() * 4; }
};

// x [M, K] float32 or bfloat16 (any leading dims are flattened by the caller).
QuantizedTokens quantize_activations_int8(const at::Tensor& x, const at::Tensor& norm_weight = {},
                                          double norm_eps = 1e-6, double eps = 1e-5);
// w [N, K] float32. Granularity per tensor, per channel or per group (group a multiple of 64).
PackedTernary pack_ternary(const at::Tensor& w, Granularity granularity, int64_t group = 128, double eps = 1e-5);
// From codes and scales already computed (e.g. QuantizedWeight of a BitLinear).
PackedTernary pack_codes(const at::Tensor& codes, const at::Tensor& scales, Granularity granularity, int64_t group);
at::Tensor unpack_codes(const PackedTernary& p);  // int8 [N, K]
// y [M, N] = (x.q @ codes^T) * wscale / xscale (+ bias [N]) in out_dtype (float32 or bfloat16), on
// the operands' device (CUDA: the kernels of cuda/w158a8.hpp on the current stream; CPU: the scalar
// references). Throws c10::Error naming the operand and the value found when any operand is on
// another device, has another dtype (codes int8, packed int32, scales float32), another shape
// (codes [M, padded_k(K)], activation scales [M], packed [N, words_per_row(K)], weight scales [1],
// [N] or [N, ceil(K / group)]), is not contiguous or (CUDA) not 16-byte aligned, when K differs, or
// when a per-group weight has a group size that is not a positive multiple of 64.
at::Tensor w158a8_matmul(const QuantizedTokens& x, const PackedTernary& w, const at::Tensor& bias,
                         at::ScalarType out_dtype);
// The same into out (float32 or bfloat16, contiguous [M, N], same device); every element is written.
void w158a8_matmul_out(const QuantizedTokens& x, const PackedTernary& w, const at::Tensor& bias, at::Tensor& out);
// Raw int32 accumulators [M, N] = x.q @ codes^T (tests), into out when given (int32 [M, N]).
at::Tensor w158a8_matmul_int32(const QuantizedTokens& x, const PackedTernary& w, at::Tensor out = {});

cuda::ScaleKind scale_kind(Granularity g);

// One layer call: x [M, K] float32 or bf16, optionally RMS-normalised with norm_weight [K], quantized
// per token (8 bits, eps), times the packed weight (+ bias) in out_dtype. On the kernels, at M = 1,
// the plan may fuse the quantization into the GEMV (kGemvFused); the result is the same codes, the
// same sums and the same epilogue. Throws c10::Error as quantize_activations_int8 and w158a8_matmul.
at::Tensor w158a8_linear(const at::Tensor& x, const at::Tensor& norm_weight, double norm_eps, double eps,
                         const PackedTernary& w, const at::Tensor& bias, at::ScalarType out_dtype);

// The plan the kernels take for M tokens of `w` on `device` (cuda/dispatch.hpp: the measured table
// for the device's name, else the default), or the override below.
cuda::Plan plan_for(const at::Device& device, int64_t m, const PackedTernary& w);
// Forces every kernel call to `plan` (nullptr: the dispatch), where the plan can serve the call;
// benchmarks and tests. Process-wide.
void set_plan_override(const cuda::Plan* plan);

}  // namespace bitqat::bitlinear::ops
