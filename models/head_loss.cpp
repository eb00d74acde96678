#include "models/head_loss.hpp"

#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <algorithm>

namespace bitqat::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Parts {
  at::Tensor total, ce, kd, grad_h, grad_w;
};

// The loss of head_loss.hpp, chunk by chunk, and (when asked) d total / dh and d total / dw.
Parts compute(const at::Tensor& h, const at::Tensor& w, const at::Tensor& y, const at::Tensor& th,
              const at::Tensor& tw, double alpha, double temperature, int64_t chunk, bool need_h, bool need_w) {
  const int64_t n = h.size(0);
  const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool teacher = th.defined();
  const bool need = need_h || need_w;
  const double inv_n = 1.0 / static_cast<double>(n);
  const double a = teacher ? alpha : 1.0;
  const auto wh = w.to(h.scalar_type());
  const auto twh = teacher ? tw.to(th.scalar_type()) : at::Tensor();
  Parts p;
  if (need_h) p.grad_h = at::empty_like(h);
  if (need_w) p.grad_w = at::zeros(w.sizes(), w.options().dtype(acc));
  auto ce_sum = at::zeros({}, h.options().dtype(acc));
  auto kd_sum = at::zeros({}, h.options().dtype(acc));
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t c = std::min(chunk, n - s);
    const auto hc = h.narrow(0, s, c);
    const auto yc = y.narrow(0, s, c).unsqueeze(1);
    at::Tensor dz, ls;  // d total / dz and log softmax(z / T) of the chunk, [c, V]
    {
      const auto z = at::matmul(hc, wh.t()).to(acc);  // [c, V], released at the end of this scope
      const auto lse = z.logsumexp(-1, /*keepdim=*/true);
      ce_sum.add_((lse - z.gather(1, yc)).sum());
      if (need) {
        dz = (z - lse).exp_().mul_(a * inv_n);
        dz.scatter_add_(1, yc, at::full({c, 1}, -a * inv_n, dz.options()));
      }
      if (teacher) ls = at::log_softmax(z / temperature, -1);
    }
    if (teacher) {
      auto lt = at::log_softmax(at::matmul(th.narrow(0, s, c), twh.t()).to(acc).div_(temperature), -1);
      const auto pt = lt.exp();
      kd_sum.add_(lt.sub_(ls).mul_(pt).sum());  // sum p_t (log p_t - log p), in lt's buffer
      if (need) dz.add_(ls.exp_().sub_(pt), (1.0 - a) * temperature * inv_n);
    }
    if (need_h) p.grad_h.narrow(0, s, c).copy_(at::matmul(dz.to(h.scalar_type()), wh));
    if (need_w) p.grad_w.addmm_(dz.t(), hc.to(acc));
  }
  p.ce = ce_sum * inv_n;
  p.kd = kd_sum * inv_n;
  p.total = teacher ? a * p.ce + (1.0 - a) * temperature * temperature * p.kd : p.ce.clone();
  if (need_w) p.grad_w = p.grad_w.to(w.scalar_type());
  return p;
}

// The autograd node: the gradients formed in the forward pass, times the incoming one.
struct HeadLossFunction : torch::autograd::Function<HeadLossFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w, const at::Tensor& y,
                               const at::Tensor& th, const at::Tensor& tw, double alpha, double temperature,
                               int64_t chunk) {
    // No teacher arrives as empty tensors (an autograd node's inputs must be defined).
    const bool teacher = th.numel() > 0;
    auto p = compute(h, w, y, teacher ? th : at::Tensor(), teacher ? tw : at::Tensor(), alpha, temperature, chunk,
                     h.requires_grad(), w.requires_grad());
    ctx->save_for_backward({p.grad_h, p.grad_w});
    ctx->mark_non_differentiable({p.ce, p.kd});
    return {p.total, p.ce, p.kd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!ctx->saved_data.count("done"),
                "head_loss: a second backward pass through the node (retain_graph) is not supported: its gradient "
                "buffers were scaled in place by the first");
    ctx->saved_data["done"] = true;
    const auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    // In place: the node's buffers are not read again, and the weight's gradient can become .grad
    // without a copy.
    auto scaled = [&](at::Tensor t) { return t.defined() ? t.mul_(g.to(t.scalar_type())) : at::Tensor(); };
    return {scaled(saved[0]), scaled(saved[1]), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(),     at::Tensor(),     at::Tensor()};
  }
};

}  // namespace

int64_t head_loss_chunk(int64_t vocab) {
  constexpr int64_t kElements = int64_t{1} << 23;  // 32 MiB of float32 logits
  return std::max<int64_t>(16, kElements / std::max<int64_t>(vocab, 1));
}

HeadLoss head_loss(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets, const at::Tensor& teacher_h,
                   const at::Tensor& teacher_w, double alpha, double temperature, int64_t chunk_tokens) {
  TORCH_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1), "head_loss: features [N, d] and head [V, d], got ",
              h.sizes(), " and ", w.sizes());
  TORCH_CHECK(h.size(0) > 0, "head_loss: no tokens");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == h.size(0) && targets.scalar_type() == at::kLong,
              "head_loss: targets must be [N] int64 with N = ", h.size(0), ", got ", targets.sizes(), " ",
              targets.scalar_type());
  const int64_t v = w.size(0);
  if (targets.device().is_cpu()) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < v,
                "head_loss: a target is outside [0, ", v, ")");
  }
  TORCH_CHECK(teacher_h.defined() == teacher_w.defined(), "head_loss: the teacher needs both features and head");
  const bool teacher = teacher_h.defined();
  if (teacher) {
    TORCH_CHECK(teacher_h.dim() == 2 && teacher_w.dim() == 2 && teacher_h.size(0) == h.size(0) &&
                    teacher_w.size(0) == v && teacher_h.size(1) == teacher_w.size(1),
                "head_loss: the teacher's features [N, d_t] and head [V, d_t] must match N = ", h.size(0),
                " and V = ", v, ", got ", teacher_h.sizes(), " and ", teacher_w.sizes());
    TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "head_loss: alpha ", alpha, " is outside [0, 1]");
    TORCH_CHECK(temperature > 0.0, "head_loss: temperature ", temperature, " must be > 0");
  }
  const int64_t chunk = chunk_tokens > 0 ? chunk_tokens : head_loss_chunk(v);
  const auto th = teacher ? teacher_h.detach() : at::Tensor();
  const auto tw = teacher ? teacher_w.detach() : at::Tensor();
  const bool grad = at::GradMode::is_enabled() && (h.requires_grad() || w.requires_grad());
  HeadLoss out;
  if (grad) {
    const auto none = h.new_empty({0});
    const auto r = HeadLossFunction::apply(h, w, targets, teacher ? th : none, teacher ? tw : none, alpha,
                                           temperature, chunk);
    out = {r[0], r[1], r[2]};
  } else {
    const auto p = compute(h, w, targets, th, tw, alpha, temperature, chunk, false, false);
    out = {p.total, p.ce, p.kd};
  }
  if (!teacher) out.kd = at::Tensor();
  return out;
}

}  // namespace bitqat::models
