#include "models/attention.hpp"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "models/cpu/attention_kernels.hpp"

namespace bitqat::models {
namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention: q, k, v must be [B, T, heads, d], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "causal_attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3), "causal_attention: q ",
              q.sizes(), " and k ", k.sizes(), " differ in batch, length or head size");
  TORCH_CHECK(k.size(2) > 0 && q.size(2) >= k.size(2) && q.size(2) % k.size(2) == 0, "causal_attention: ", q.size(2),
              " query heads are not a positive multiple of ", k.size(2), " key/value heads");
}

bool cpu_float(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

// The softmax scale of head size d.
float softmax_scale(int64_t d) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))); }

// Work memory for one thread's calls: a float tensor (LibTorch's CPU allocator aligns to 64 bytes,
// so the kernels' 64-byte vectors do not split cache lines).
at::Tensor work_buffer(int64_t T, int64_t d) { return at::empty({cpu::attention_work_floats(T, d)}, at::kFloat); }

// Last dimension dense, as the kernels read rows of d floats.
at::Tensor rows_dense(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

// A (batch, head)'s matrix: T rows of d floats at stride(1).
const float* at_head(const at::Tensor& t, int64_t b, int64_t h) {
  return t.data_ptr<float>() + b * t.stride(0) + h * t.stride(2);
}
float* at_head_mut(at::Tensor& t, int64_t b, int64_t h) {
  return t.data_ptr<float>() + b * t.stride(0) + h * t.stride(2);
}

struct CausalAttentionFn : torch::autograd::Function<CausalAttentionFn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in) {
    RECORD_FUNCTION("bitqat::causal_attention", std::vector<c10::IValue>());
    const auto q = rows_dense(q_in.detach()), k = rows_dense(k_in.detach()), v = rows_dense(v_in.detach());
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), group = H / k.size(2);
    auto o = at::empty({B, T, H, d}, q.options());
    auto lse = at::empty({B, H, T}, q.options());
    const auto& kern = cpu::attention_kernels();
    const float scale = softmax_scale(d);
    at::parallel_for(0, B * H, 1, [&](int64_t p0, int64_t p1) {
      auto work = work_buffer(T, d);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / H, h = p % H;
        kern.forward(at_head(q, b, h), q.stride(1), at_head(k, b, h / group), k.stride(1), at_head(v, b, h / group),
                     v.stride(1), T, d, scale, at_head_mut(o, b, h), o.stride(1), lse.data_ptr<float>() + p * T,
                     work.data_ptr<float>());
      }
    });
    ctx->save_for_backward({q, k, v, o, lse});
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    RECORD_FUNCTION("bitqat::causal_attention_backward", std::vector<c10::IValue>());
    // The kernels' gradients carry no graph of their own.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "causal_attention: double backward (create_graph) is not supported by the CPU attention kernels");
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &o = saved[3], &lse = saved[4];
    const auto g = rows_dense(grads[0]);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hkv = k.size(2), group = H / Hkv;
    auto dq = at::empty({B, T, H, d}, q.options());
    auto dk = at::empty({B, T, Hkv, d}, q.options());
    auto dv = at::empty({B, T, Hkv, d}, q.options());
    const auto& kern = cpu::attention_kernels();
    const float scale = softmax_scale(d);
    // One task per (batch, key/value head): its query heads add into the same dk, dv.
    at::parallel_for(0, B * Hkv, 1, [&](int64_t p0, int64_t p1) {
      auto work = work_buffer(T, d);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / Hkv, kh = p % Hkv;
        for (int64_t j = 0; j < group; ++j) {
          const int64_t h = kh * group + j;
          kern.backward(at_head(q, b, h), q.stride(1), at_head(k, b, kh), k.stride(1), at_head(v, b, kh), v.stride(1),
                        at_head(o, b, h), o.stride(1), at_head(g, b, h), g.stride(1),
                        lse.data_ptr<float>() + (b * H + h) * T, T, d, scale, at_head_mut(dq, b, h), dq.stride(1),
                        at_head_mut(dk, b, kh), dk.stride(1), at_head_mut(dv, b, kh), dv.stride(1), j > 0,
                        work.data_ptr<float>());
        }
      }
    });
    return {dq, dk, dv};
  }
};

}  // namespace

bool causal_attention_uses_cpu_kernels(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!(cpu_float(q) && cpu_float(k) && cpu_float(v) && q.dim() == 4)) return false;
  return causal_attention_cpu_kernels_for(q.size(1), q.size(3));
}

bool causal_attention_cpu_kernels_for(int64_t T, int64_t d) {
  // Where bench/attention_bench measured the kernels faster than ATen's (models/attention.hpp).
  return cpu::attention_kernel_supports(T, d) && ((T <= 512 && d <= 64) || T <= 128);
}

at::Tensor causal_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_shapes(q, k, v);
  TORCH_CHECK(cpu_float(q) && cpu_float(k) && cpu_float(v),
              "causal_attention_cpu: q, k, v must be CPU float32 tensors");
  TORCH_CHECK(q.size(0) > 0 && cpu::attention_kernel_supports(q.size(1), q.size(3)),
              "causal_attention_cpu: the kernels take 1 <= T <= ", cpu::kMaxSeq, " and d in 16, 32, ..., ",
              cpu::kMaxHeadDim, ", got q ", q.sizes());
  return CausalAttentionFn::apply(q, k, v);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_shapes(q, k, v);
  if (q.size(0) > 0 && causal_attention_uses_cpu_kernels(q, k, v)) return CausalAttentionFn::apply(q, k, v);
  auto kh = k.transpose(1, 2), vh = v.transpose(1, 2);
  if (k.size(2) != q.size(2)) {
    kh = kh.repeat_interleave(q.size(2) / k.size(2), 1);
    vh = vh.repeat_interleave(q.size(2) / k.size(2), 1);
  }
  return at::scaled_dot_product_attention(q.transpose(1, 2), kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                          /*is_causal=*/true)
      .transpose(1, 2);
}

}  // namespace bitqat::models
