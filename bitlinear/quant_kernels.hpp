// Tensor-level entry points of the code-defining arithmetic of cuda/quant_codes.hpp: RMSNorm,
// int8 activation codes and ternary / binary weight codes with their scales. CPU tensors run the
// canonical loops of that header over rows (at::parallel_for; the result does not depend on the
// thread count or the instruction set). CUDA tensors run device kernels that compute the same values
// (cuda/quant.hpp), launched by the op layer, which registers them here (DeviceKernels below):
// bitlinear itself launches nothing. No autograd here: quantizers.hpp and estimators.hpp build on
// these.
//
// Every entry point checks its operands before any work, on every device, and throws c10::Error
// naming the function, the argument and the value found: the device (the CPU, or a CUDA device
// where the function has device kernels; every operand on the first one's device), the dtype, the
// shape and contiguity of what is read in place, sizes that must agree, bits in 2..8 and group
// sizes >= 1.
#pragma once
#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace bitqat::bitlinear::kernels {

// The dtype quantization arithmetic runs in: float64 for double inputs (gradient checks), float32
// for everything else (bf16 and fp16 inputs are widened exactly).
at::ScalarType compute_dtype(const at::Tensor& t);

struct RowCodes {
  at::Tensor codes;   // int8 [M, ldq], zeros in columns K..ldq
  at::Tensor scales;  // [M] in the compute dtype; x ~= code / scale; NaN for a non-finite row
};

// Per-row absmax codes of x [M, K] (contiguous, floating). qmax = 2^(bits-1) - 1. ldq >= K (default
// K). With norm_weight [K] (any floating dtype and device: converted), each row is first
// RMS-normalised as rms_norm() does (the fused SubLN). CPU: scales in the compute dtype; CUDA:
// float32 or bf16 x (others are converted to float32), scales float32.
RowCodes quantize_rows(const at::Tensor& x2d, double eps, int bits, int64_t ldq = -1,
                       const at::Tensor& norm_weight = {}, double norm_eps = 1e-6);

// Absmax codes of a whole tensor x (any shape and layout, floating): codes int8 of x's shape,
// scales [1] (float32 on CUDA, else the compute dtype).
RowCodes quantize_tensor(const at::Tensor& x, double eps, int bits);

// RMSNorm of x [M, K] (contiguous, floating) with weight w [K] (or undefined: 1; converted like the
// norm weight above): y [M, K] and r [M] (1 / root mean square) in the compute dtype (float32 on
// CUDA); y = (x * r) * w.
std::pair<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x2d, const at::Tensor& w, double eps);

struct WeightCodes {
  at::Tensor codes;  // int8 [rows, cols]
  at::Tensor gamma;  // mean |w| per group: [rows, groups], or [1] per tensor (compute dtype)
  at::Tensor mean;   // binary only: mean w per group, same shape as gamma
};

// Codes of w [rows, cols] (contiguous, floating, not empty) with one scale per `group` consecutive
// columns of a row (the last may be shorter; group = cols: per channel; group >= 1) or, per_tensor,
// one scale for all (group ignored). Ternary: clamp(round(w / (gamma + eps)), -1, 1); binary:
// sign(w - mean) (sign(0) = +1). CUDA: computed in float32.
WeightCodes weight_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, bool binary, double eps);
// weight_codes of one type: the quantize functions of the weight traits (bitlinear/quantizers.hpp).
WeightCodes ternary_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps);
WeightCodes binary_codes(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps);

// Dequantized weights code * scale: codes int8 [rows, cols] (contiguous) with gamma as weight_codes
// returns it ([rows, ceil(cols / group)], or [1] per tensor; floating, on the codes' device) -> [rows,
// cols] in gamma's dtype. One IEEE product per value on every path (float32 CPU tensors: the row
// kernel).
at::Tensor scale_codes(const at::Tensor& codes, const at::Tensor& gamma, int64_t group, bool per_tensor);

// ---- fused passes of the float32 training path (bitlinear/cpu/row_kernels.hpp, cuda/quant.hpp) ---
// Each produces exactly the values of the composed definitions above (the same codes and scales, one
// IEEE operation per step); double tensors take the composed path in the callers.

// Whether the fused CPU kernels serve this tensor (float32 on the CPU).
bool fused_cpu(const at::Tensor& t);
// Whether the fused fake-quantization passes below (act_fake_quant, act_ste_backward,
// ternary_fake_quant) serve this tensor: float32 on the CPU (row kernels) or on a CUDA device
// (the device kernels, the same values bit for bit).
bool fused_fake_quant(const at::Tensor& t);

// Fake-quantized activations of x [M, K] float32 (contiguous): out = x + lambda * (code / s - x),
// scales [M].
std::pair<at::Tensor, at::Tensor> act_fake_quant(const at::Tensor& x2d, double eps, int bits, double lambda);
// The straight-through gradient of act_fake_quant for g [M, K] (any strides) and x [M, K]
// (contiguous), float32, and the forward's scales [M] float32 (contiguous): g itself for the
// identity estimator (clip < 0), else g * ((1 - lambda) + lambda * [|x| * s / qmax <= clip]).
at::Tensor act_ste_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& scales, int bits,
                            double clip, double lambda);
// Fake-quantized ternary weights of w [rows, cols] float32 (contiguous): out = w + lambda * (code *
// gamma - w), with gamma as weight_codes.
std::pair<at::Tensor, at::Tensor> ternary_fake_quant(const at::Tensor& w2d, int64_t group, bool per_tensor, double eps,
                                                     double lambda);
// x_deq [M, K] float32 = codes (int8 [M, K], contiguous) / s per row (s float32 [M], contiguous);
// CPU.
at::Tensor dequant_rows(const at::Tensor& codes, const at::Tensor& scales);
// The exact linear's epilogue (bitlinear/quantized_linear.hpp) on the CPU: acc per group int32 [M, N]
// (the integer sums, each |acc| < 2^24), gamma float32 [N, G] (or [1] / [N]), s [M] float32
// (contiguous), bias [N] or undefined -> y [M, N]. reuse_acc: the caller gives the sums up, and with
// one contiguous group the output is written over them (y then shares acc[0]'s storage, viewed as
// float32).
at::Tensor linear_epilogue(const std::vector<at::Tensor>& acc, const at::Tensor& gamma, int64_t gstride,
                           const at::Tensor& scales, const at::Tensor& bias, bool reuse_acc = false);
// The input of the fused exact linears (bitlinear/quantized_linear.hpp quantized_linears): per-token
// codes of n(a(x)) for x [M, K] float32 (contiguous) on the CPU, with a = relu(x)^2 when relu2 (relu
// keeps NaN and maps -0 to +0) else the identity, and n = RMSNorm with norm_weight [K] when defined
// (as rms_norm) else the identity. The normalized values are never stored: codes int8 [M, K] and
// scales [M] equal quantize_rows of the composed tensor bit for bit, and r [M] (undefined without a
// norm) is the norm's 1 / rms for rms_norm_backward.
struct NormCodes {
  at::Tensor codes, scales, r;
};
NormCodes norm_quantize_rows(const at::Tensor& x2d, double eps, int bits, bool relu2, const at::Tensor& norm_weight,
                             double norm_eps);
// RMSNorm backward on the CPU: (dx [M, K], dw [K]) from the upstream gradient g [M, K] (any strides),
// x [M, K] (any strides), w [K] (or undefined: 1) and the forward's r [M] (contiguous), all float32.
// With relu2, x is u and the norm read relu(u)^2: dx is then the gradient with respect to u.
// reuse_grad: the caller gives g up, and a contiguous g receives dx (returned as dx; no new buffer).
std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& w,
                                                    const at::Tensor& r, bool relu2 = false, bool reuse_grad = false);

// ---- the device kernels -------------------------------------------------------------------------
// The op layer fills this table when a program links it (bitlinear/ops/quant_ops.hpp); bitlinear
// never includes the op layer. Each entry has the signature of the entry point of the same name,
// which calls it after its checks with the default arguments resolved (ldq >= K; for weight_codes,
// group = cols per tensor).
struct DeviceKernels {
  // Whether the table serves this tensor: CUDA tensors, and the CPU tensors a test routes to the
  // kernels built for the CPU harness (bitlinear/ops/route.hpp set_cpu_launchers).
  bool (*serves)(const at::Tensor& t);
  decltype(&::bitqat::bitlinear::kernels::quantize_rows) quantize_rows;
  decltype(&::bitqat::bitlinear::kernels::quantize_tensor) quantize_tensor;
  decltype(&::bitqat::bitlinear::kernels::rms_norm) rms_norm;
  decltype(&::bitqat::bitlinear::kernels::weight_codes) weight_codes;
  decltype(&::bitqat::bitlinear::kernels::act_fake_quant) act_fake_quant;
  decltype(&::bitqat::bitlinear::kernels::act_ste_backward) act_ste_backward;
  decltype(&::bitqat::bitlinear::kernels::ternary_fake_quant) ternary_fake_quant;
};
// Installs the device kernels (process-wide; the last call wins). Without them a CUDA tensor is an
// error that says to link bitqat_bitlinear_ops.
void register_device_kernels(const DeviceKernels* kernels);
const DeviceKernels* device_kernels();

}  // namespace bitqat::bitlinear::kernels
