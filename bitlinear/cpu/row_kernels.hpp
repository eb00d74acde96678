// Vectorized CPU row kernels of the float32 quantization and normalisation paths. One source
// (row_kernels_impl.hpp) is compiled three times, for baseline x86-64, AVX2 and AVX-512, and the
// variant matching LibTorch's CPU capability (ATEN_CPU_CAPABILITY, else the CPU's best) is used
// (core/cpu_isa.hpp kernel_isa).
// Every variant computes exactly the values of the scalar definitions in cuda/quant_codes.hpp: the
// same canonical double sums lane by lane, single IEEE operations, no FMA contraction
// (-ffp-contract=off), and round-half-away done exactly without libm. So codes, scales and outputs
// are bit-identical across variants, thread counts and with the CUDA kernels. The one exception is
// rms_norm_backward's row sum, a gradient with no CUDA twin to match: it has its own fixed order
// (16 interleaved double lanes), the same in every variant.
//
// All pointers are to contiguous row-major float32 (codes int8) arrays; each function handles the
// rows [begin, end) of an [m, k] matrix, and callers split rows over threads (at::parallel_for).
#pragma once
#include <cstdint>

// core/cpu_isa.hpp, declared rather than included: the per-instruction-set sources include this
// header, and nothing they compile may be shared with other translation units.
namespace bitqat::core {
enum class CpuIsa;
}

namespace bitqat::bitlinear::cpu {

struct RowKernels {
  const char* isa;  // "default", "avx2", "avx512"

  // RMSNorm: y = (x * r) * w (w may be null: 1), r = 1 / sqrt(sum_sq / k + eps); r may be null.
  void (*rms_norm)(const float* x, int64_t k, const float* w, double eps, float* y, float* r, int64_t begin,
                   int64_t end);
  // RMSNorm backward given r from the forward: dx = r * (g w - xhat * mean(g w xhat)), xhat = x r;
  // dw_partial[j] += sum over these rows of g * xhat (the caller sums the partials in a fixed order).
  // relu2: x holds u and the norm's input was relu(u)^2 (act_quant_rows' relu2); dx is then the
  // gradient with respect to u, dx * (relu(u) + relu(u)). dx may be g (in place).
  void (*rms_norm_backward)(const float* g, const float* x, const float* w, const float* r, int64_t k, bool relu2,
                            float* dx, float* dw_partial, int64_t begin, int64_t end);
  // Per-token absmax codes (cuda/quant_codes.hpp act_quant_row) of relu(x)^2 (relu2) or x, optionally
  // after the fused RMSNorm (norm_w non-null; r[row] receives its 1 / rms when r is non-null): writes
  // codes as int8 (q, row stride ldq, zeros past k) and/or as float (qf, the same stride), either may
  // be null; scales s[row] (NaN for a non-finite row). relu(v) keeps NaN and maps -0 to +0.
  void (*act_quant_rows)(const float* x, int64_t k, int64_t ldq, float eps, int qmax, bool relu2, const float* norm_w,
                         double norm_eps, int8_t* q, float* qf, float* s, float* r, int64_t begin, int64_t end);
  // Fake-quantized activations: out = x + lambda * (code / s - x) (exactly code / s at lambda 1, x at
  // 0), and the scales s[row].
  void (*act_fake_quant_rows)(const float* x, int64_t k, float eps, int qmax, float lambda, float* out, float* s,
                              int64_t begin, int64_t end);
  // The straight-through gradient of fake_quant: identity (clip < 0) or clipped: g * ((1 - lambda) +
  // lambda * [|x| * s / qmax <= clip]).
  void (*act_ste_backward)(const float* g, const float* x, const float* s, int64_t k, int qmax, float clip,
                           float lambda, float* dx, int64_t begin, int64_t end);
  // Canonical sums of |w| over the groups of each row: out[row * groups + g] (groups of `group`
  // columns, the last may be shorter).
  void (*abs_sums)(const float* w, int64_t cols, int64_t group, double* out, int64_t begin, int64_t end);
  // Ternary codes with the scale of (row, col) at gamma[row * stride + col / group] (stride 0: one
  // scale), as int8 and/or float (either may be null), and optionally the fake-quantized weight
  // out = w + lambda * (code * gamma - w).
  void (*ternary_rows)(const float* w, int64_t cols, int64_t group, int64_t stride, const float* gamma, float eps,
                       int8_t* codes, float* codes_f, float lambda, float* out, int64_t begin, int64_t end);
  // The exact quantized linear's epilogue (cuda/reference.cpp epilogue_ref's order): for each row m,
  // y[m, n] = (sum over groups g of acc[g][m, n] * gamma[n * gstride + g]) / s[m] (+ bias[n]).
  // acc holds `groups` pointers to [rows, n] int32 matrices of the integer sums (|acc| < 2^24, so
  // each converts to float exactly). With one group, y may be acc[0]'s own memory (in place).
  void (*linear_epilogue)(const int32_t* const* acc, int64_t groups, int64_t n, const float* gamma, int64_t gstride,
                          const float* s, const float* bias, float* y, int64_t begin, int64_t end);
  // Dequantized activations for the backward: out[row, j] = float(codes[row, j]) / s[row].
  void (*dequant_rows)(const int8_t* codes, int64_t k, const float* s, float* out, int64_t begin, int64_t end);
  // Dequantized weights: out[row, j] = float(codes[row, j]) * gamma[row * stride + j / group].
  void (*scale_codes)(const int8_t* codes, int64_t cols, int64_t group, int64_t stride, const float* gamma, float* out,
                      int64_t begin, int64_t end);
};

// The variant for LibTorch's current CPU capability.
const RowKernels& row_kernels();
// A given variant, or nullptr when this CPU cannot run it (tests, benchmarks).
const RowKernels* row_kernels_for(core::CpuIsa isa);

}  // namespace bitqat::bitlinear::cpu
