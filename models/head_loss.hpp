// The language model's head and its loss in one node, over the vocabulary in chunks of tokens: the
// logits z = h W^T of all tokens are never held at once, and neither are the softmaxes of a
// distillation teacher. Each chunk's logits are made, turned into its loss and into the gradient of
// the loss with respect to them, and dropped; the gradients with respect to h and W are formed in
// the forward pass (the scheme of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024,
// arXiv 2410.10989) and scaled by the incoming gradient in the backward pass.
//
// With N tokens, targets y, student features h [N, d] and head W [V, d]; optionally a teacher's
// features h_t [N, d_t] and head W_t [V, d_t]; alpha in [0, 1] and a temperature T > 0:
//   z = h W^T, z_t = h_t W_t^T, p = softmax(z / T), p_t = softmax(z_t / T)
//   ce    = mean_i (logsumexp(z_i) - z_i[y_i])
//   kd    = mean_i sum_v p_t,i(v) (log p_t,i(v) - log p_i(v))            (0 without a teacher)
//   total = alpha ce + (1 - alpha) T^2 kd                                  (ce without a teacher)
//   d total / d z_i = alpha (softmax(z_i) - onehot(y_i)) / N + (1 - alpha) T (p_i - p_t,i) / N
// (Hinton, Vinyals and Dean 2015: the T^2 keeps the soft targets' gradient scale independent of T.)
// The logits are formed in h's dtype and the softmaxes computed in float32 (float64 for float64
// inputs), as BitLM's head and at::cross_entropy_loss do. Memory: besides the two gradients it holds,
// 2 [chunk, V] float32 buffers are live at once without a teacher (the logits and one temporary or
// the gradient), 4 with one (the gradient, the log-softmaxes, the teacher's probabilities), instead of
// several [N, V] ones (training/memory_plan.hpp counts them).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace bitqat::models {

struct HeadLoss {
  at::Tensor total;  // scalar, differentiable with respect to h and w
  at::Tensor ce;     // scalar, no gradient
  at::Tensor kd;     // scalar, no gradient; undefined without a teacher
};

// h [N, d] (float32, float64, or the autocast dtype of a CUDA step), w [V, d], targets [N] int64 in
// [0, V); teacher_h [N, d_t] and teacher_w [V, d_t] both defined or both undefined (they carry no
// gradient). chunk_tokens: tokens per chunk, 0 for head_loss_chunk(V). Gradients for h and w are
// computed only where they require one and grad mode is on (evaluation pays for the loss alone); the
// node holds them, [N, d] in h's dtype and [V, d] in w's, from the forward to its backward, which may
// run once (no retain_graph, no double backward). c10::Error for shapes that disagree, a target out of
// range (checked on the CPU), alpha outside [0, 1], T <= 0 or a second backward pass.
HeadLoss head_loss(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets,
                   const at::Tensor& teacher_h = {}, const at::Tensor& teacher_w = {}, double alpha = 1.0,
                   double temperature = 1.0, int64_t chunk_tokens = 0);

// The default chunk: tokens whose [chunk, V] float32 logits take 32 MiB (at least 16).
int64_t head_loss_chunk(int64_t vocab);

}  // namespace bitqat::models
