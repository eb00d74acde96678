// Knowledge distillation from a frozen full-precision teacher while a student is fine-tuned into
// ternary: the loss and the task that runs both models (the `distill:` section is DistillConfig in
// training/config.hpp).
//
// Loss per batch (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network";
// the T^2 factor keeps the soft targets' gradient scale independent of T):
//   loss = alpha * CE(student logits, targets)
//        + (1 - alpha) * T^2 * KL(p_teacher || p_student)        p = softmax(logits / T)
//        + hidden.weight * mean over hidden.layers of MSE(h_student[l], h_teacher[l])
//        + attention.weight * mean over attention.relations of the relation KL below
// CE and KL are means over the batch's tokens (KL summed over the vocabulary); h[l] is the residual
// stream after block l ([B, T, dim]), its MSE the mean over elements.
//
// Attention relations (MiniLM-v2, Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation
// Distillation for Compressing Pretrained Transformers", section 3.1; BitDistill, Wu et al. 2025,
// arXiv 2510.13998, section 3.3, on one late layer): for a projection X of block attention.layer (q,
// k or v, [B, T, F], before the rotary embedding), its F features (the heads concatenated, in order)
// are split into H relation heads of d_r = F / H, and R = softmax(X_h X_h^T / sqrt(d_r)) over the
// positions each token sees (s <= t: the causal visibility of the model's own attention). The loss of
// a relation is KL(R_teacher || R_student) summed over a row, mean over the B x H x T rows. With
// grouped-query attention, k and v have n_kv_heads * head_dim features: their relation heads split
// those (H must divide the width of every listed projection; the default H = n_kv_heads does).
//
// The teacher is a BitLM with every layer in full precision and no gradient, on the student's
// device, its forward in float32 (outside any autocast). By default it is the init_from source; it is
// never checkpointed: a resumed run reads it again and refuses it when its fingerprint (the bits of
// its parameters, training/distributed.hpp's bit_fingerprint) differs from the checkpoint's. In a
// data-parallel run only rank 0 reads it; the model config and the weights reach the other ranks by
// broadcast. A teacher whose vocabulary differs from the student's is refused: the two distributions
// must be over the same tokens.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "models/lm.hpp"
#include "training/task.hpp"

namespace bitqat::training {

class DistContext;

struct DistillLoss {
  at::Tensor total, ce, kd, hidden;  // scalars; hidden is undefined without hidden layers
};

// The attention-relation loss above: student[i] and teacher[i] the same relation's projection of the
// two models ([B, T, F_s] and [B, T, F_t], F_s and F_t multiples of heads; the teacher's carry no
// gradient), averaged over i. A scalar in the student's dtype. c10::Error for mismatched shapes.
at::Tensor attention_relation_loss(const std::vector<at::Tensor>& student, const std::vector<at::Tensor>& teacher,
                                   int64_t heads);

// The loss above. The logits are features x head^T, never formed for all tokens at once: the head
// and the CE and KL terms run as models::head_loss (chunk_tokens tokens at a time; 0: its default).
// student_features [N, d_s] and student_head [V, d_s]; teacher_features [N, d_t] and teacher_head
// [V, d_t] (no gradient); targets [N] int64; hidden lists of equal length with equal shapes.
DistillLoss distill_loss(const at::Tensor& student_features, const at::Tensor& student_head,
                         const at::Tensor& teacher_features, const at::Tensor& teacher_head, const at::Tensor& targets,
                         double alpha, double temperature, const std::vector<at::Tensor>& student_hidden = {},
                         const std::vector<at::Tensor>& teacher_hidden = {}, double hidden_weight = 0.0,
                         int64_t chunk_tokens = 0);

// Wraps the student's task (kind lm) with a teacher read from cfg.distill.teacher (or init_from),
// on rank 0 only, then broadcast. The returned task's loss() is the distillation loss, its
// loss_parts() are loss_ce, loss_kd (and loss_hidden), evaluate() is the student's. UserErrors name
// the config key for a missing teacher, another vocabulary or a hidden layer either model lacks.
std::unique_ptr<Task> make_distill_task(std::unique_ptr<Task> student, const Config& cfg, const at::Device& device,
                                        DistContext& dist);

// A fresh run whose teacher is its init_from source: copies the teacher's weights (already read and
// broadcast) into the student, so the source is read once. Returns false (nothing done) otherwise.
bool init_student_from_teacher(Task& task, const Config& cfg);

}  // namespace bitqat::training
