// BitNet b1.58's absmean scale (Ma et al. 2024, "The Era of 1-bit LLMs", eq. 1-3): gamma = mean |W|
// over a scale group, from canonical double sums of |W| (cuda/quant_codes.hpp), so that the value
// depends neither on the thread count, nor on the instruction set, nor on how the weight is split.
// kernels::weight_codes() computes its ternary scales with these functions; sharded data parallelism
// (training/ternary_gather.hpp) computes the same scales from the ranks' sums of whole rows and groups.
//
// A scale group's sum is the canonical sum over its elements in order; a per-tensor scale is the
// canonical sum over the rows of each row's canonical sum. Then one division in double, one rounding
// to float32.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace bitqat::bitlinear::kernels {

// Canonical sums of |w| over each of the `w.numel() / len` consecutive runs of `len` elements of w
// (a CPU, contiguous float32 tensor whose size is a multiple of len): double [w.numel() / len]. A run
// is a row or a scale group. Throws c10::Error for another device, dtype or size.
at::Tensor run_abs_sums(const at::Tensor& w, int64_t len);

// A per-tensor scale: float32(canonical sum of row_sums[0 .. rows) / (rows * cols)).
float absmean_of_rows(const double* row_sums, int64_t rows, int64_t cols);

// A scale group's scale: float32(sum / n).
inline float absmean_of_group(double sum, int64_t n) { return static_cast<float>(sum / static_cast<double>(n)); }

}  // namespace bitqat::bitlinear::kernels
