// Causal self-attention over the projections' own layout, with grouped-query attention.
//
//   q [B, T, H, d], k and v [B, T, Hkv, d] (H a positive multiple of Hkv; query head h reads
//   key/value head h / (H / Hkv)), any strides (a last dimension that is not dense is copied first);
//   scores scaled by 1 / sqrt(d).
//   Returns [B, T, H, d]: row t of head h is sum_{s <= t} softmax_s(q_t . k_s / sqrt(d)) v_s.
//
// CPU float32 tensors with d % 16 == 0 and either 16 <= d <= 64, T <= 512 or d <= 128, T <= 128 run
// the CPU kernels of models/cpu/attention_kernels.hpp (the variant for LibTorch's CPU capability:
// AVX-512, AVX2 or baseline) as one autograd node (it saves q, k, v, the output and the per-row
// log-sum-exp, and recomputes the probabilities in the backward); anything else runs
// at::scaled_dot_product_attention (is_causal, keys and values repeated per query head). The split
// is where the kernels measured faster than ATen's flash-attention CPU kernel, forward plus
// backward, 2048 tokens, 4 heads, 2 threads on the project's 2-core AVX-512 Xeon
// (build/bench/attention_bench --iters 30, 2026-12-01; for AVX2 and baseline under
// ATEN_CPU_CAPABILITY and the matching MKL_ENABLE_INSTRUCTIONS): inside it 1.3-1.9x (AVX-512),
// 1.4-2.1x (AVX2), 1.6-2.2x (baseline); at T 1024, and for AVX-512 at d 128 and T >= 256, 0.64-1.4x
// (AVX-512 0.64-0.98x), as the T x T scores of a head no longer stay in the core's cache. Head sizes 16, 48 and 80-112
// were not timed. The kernels' node has no double backward (create_graph throws c10::Error). Throws c10::Error for
// mismatched shapes.
#pragma once
#include <ATen/ATen.h>

namespace bitqat::models {

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Whether causal_attention takes the CPU kernels for these inputs (tests, benchmarks).
bool causal_attention_uses_cpu_kernels(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// The shape half of that decision (CPU float32 inputs of length T and head size d): the memory plan
// (training/memory_plan.hpp) counts what the node it picks saves.
bool causal_attention_cpu_kernels_for(int64_t T, int64_t d);

// The CPU kernels' node whatever the instruction set and shape policy (tests, benchmarks); throws
// c10::Error for tensors other than CPU float32 or shapes outside attention_kernel_supports.
at::Tensor causal_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace bitqat::models
