// Causal self-attention on the CPU for one (batch, head) pair at a time, float32: the forward with
// its log-sum-exp L, and the backward that recomputes the probabilities P = exp(S - L) and uses
// D = rowsum(dO * O) (FlashAttention-2's formulation: Dao 2023, "FlashAttention-2", Algorithms 1 and
// 2, with the whole key range of a query row at once instead of blocks of it). Built for the short
// sequences of CPU training: the T x T scores of one pair live in a per-thread work buffer, and the
// products are register-tiled loops (rows x 16-float vectors) that skip the masked upper triangle.
// Row i never reads keys, values or gradients of rows after i (nor, for dk and dv, rows before j),
// so a non-finite value there cannot reach it.
//
// One source (attention_kernels_impl.hpp) is compiled for baseline x86-64, AVX2 and AVX-512 with
// vectors of the instruction set's own width and tiles sized to its register file; the variant
// matching LibTorch's CPU capability is used (core/cpu_isa.hpp kernel_isa). Products may
// contract into FMAs and the tiles differ, so the variants round differently; tests bound each
// against a double precision reference.
//
// Shapes: each matrix is T rows of d floats, row i at base + i * ld (ld in floats, any value for
// the inputs, e.g. 0 for a row broadcast; the outputs' ld >= d); d a multiple of 16 with
// 16 <= d <= kMaxHeadDim; 1 <= T <= kMaxSeq (callers check attention_kernel_supports; other d
// trap). Row i attends to rows 0..i. scale multiplies the scores (1 / sqrt(d) for standard attention).
#pragma once
#include <cstdint>

// core/cpu_isa.hpp, declared rather than included: the per-instruction-set sources include this
// header, and nothing they compile may be shared with other translation units.
namespace bitqat::core {
enum class CpuIsa;
}

namespace bitqat::models::cpu {

constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxSeq = 1024;

// Whether the kernels take this head size and length. (Defined out of line: the per-instruction-set
// sources include this header, and an inline copy of theirs must not serve other callers.)
bool attention_kernel_supports(int64_t T, int64_t d);

// Floats of work memory one call needs (64-byte aligned memory avoids split cache lines).
int64_t attention_work_floats(int64_t T, int64_t d);

struct AttentionKernels {
  const char* isa;  // "default", "avx2", "avx512"
  // o[i] = sum_{j <= i} softmax_j(scale q_i . k_j) v_j; lse[i] = log sum_{j <= i} exp(scale q_i . k_j).
  void (*forward)(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T,
                  int64_t d, float scale, float* o, int64_t ldo, float* lse, float* work);
  // Gradients given the output o, its gradient g and lse from the forward: dq is written; dk and dv
  // are written, or added to when accumulate_kv (heads sharing keys and values under grouped-query
  // attention). P = exp(scale q k^T - lse), dP = g v^T, dS = P * (dP - rowsum(g * o)),
  // dq = scale dS k, dk = scale dS^T q, dv = P^T g.
  void (*backward)(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv,
                   const float* o, int64_t ldo, const float* g, int64_t ldg, const float* lse, int64_t T, int64_t d,
                   float scale, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv,
                   bool accumulate_kv, float* work);
};

// The variant for LibTorch's current CPU capability.
const AttentionKernels& attention_kernels();
// A given variant, or nullptr when this CPU cannot run it (tests).
const AttentionKernels* attention_kernels_for(core::CpuIsa isa);

}  // namespace bitqat::models::cpu
