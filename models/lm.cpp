#include "models/lm.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "bitlinear/convert.hpp"
#include "core/error.hpp"
#include "models/attention.hpp"
#include "models/cpu/lm_kernels.hpp"
#include "models/head_loss.hpp"

namespace bitqat::models {
namespace {

// The quantization of one named linear: the config's spec when selected, full precision otherwise.
bitlinear::QuantSpec spec_for(const std::string& name, const bitlinear::QuantSpec& spec,
                              const std::vector<std::string>& include, const std::vector<std::string>& exclude) {
  return bitlinear::name_selected(name, include, exclude) ? spec : bitlinear::QuantSpec::full_precision();
}

bitlinear::BitLinear make_linear(int64_t in, int64_t out, const bitlinear::QuantSpec& q, bool sub_norm, double eps) {
  bitlinear::BitLinearOptions o(in, out);
  o.quant = q;
  o.sub_norm = sub_norm;
  o.norm_eps = eps;
  return bitlinear::BitLinear(o);
}

// relu(x)^2 as one autograd node: forward relu(x) * relu(x), backward g * (relu(x) + relu(x)), with x
// saved (at::square goes through pow and its generic backward). On CPU float32 each direction is one
// pass over memory (a loop the compiler vectorizes); elsewhere the ATen ops compute the same values.
// Both paths keep NaN, as at::relu does, so non-finite values still reach the trainer's finiteness
// check.
struct ReluSquared : torch::autograd::Function<ReluSquared> {
  static bool fused(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }
  // out[i] = backward ? g[i] * (r + r) : r * r, r = relu(x[i]); g is null in the forward. The row
  // kernel (models/cpu/lm_kernels.hpp relu_squared), vectorized for the CPU's instruction set.
  static void run(const float* x, const float* g, float* out, int64_t n) {
    const auto& lk = cpu::lm_kernels();
    at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t e) { lk.relu_squared(x, g, out, b, e); });
  }
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    RECORD_FUNCTION("bitqat::relu_squared", std::vector<c10::IValue>());
    const auto xd = x.detach();
    if (fused(xd)) {
      const auto xc = xd.contiguous();
      ctx->save_for_backward({xc});
      auto y = at::empty_like(xc);
      run(xc.data_ptr<float>(), nullptr, y.data_ptr<float>(), xc.numel());
      return y;
    }
    ctx->save_for_backward({xd});
    const auto r = at::relu(xd);
    return r * r;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
    const auto x = ctx->get_saved_variables()[0];
    if (fused(x) && fused(g[0])) {
      const auto gc = g[0].contiguous();
      auto dx = at::empty_like(x);
      run(x.data_ptr<float>(), gc.data_ptr<float>(), dx.data_ptr<float>(), x.numel());
      return {dx};
    }
    const auto r = at::relu(x);
    return {g[0] * (r + r)};
  }
};

}  // namespace

at::Tensor relu_squared(const at::Tensor& x) { return ReluSquared::apply(x); }

const core::Schema<LMConfig>& LMConfig::schema() {
  using C = LMConfig;
  static const core::Schema<LMConfig> s(
      {
          core::key("vocab_size", &C::vocab_size, "tokens in the vocabulary; 0: the data's").range(0, int64_t{1} << 24),
          core::key("dim", &C::dim, "width of the residual stream").range(2, 1 << 16),
          core::key("n_layers", &C::n_layers, "transformer blocks").range(1, 1024),
          core::key("n_heads", &C::n_heads, "attention heads (query heads)").range(1, 1024),
          core::key("n_kv_heads", &C::n_kv_heads, "key/value heads; fewer than n_heads: grouped-query attention")
              .range(1, 1024)
              .computed([](const C& c) { return c.n_heads; }, "n_heads"),
          core::key("ffn", &C::ffn,
                    "feed-forward network: relu2 down(relu(up x)^2), relu2_glu down(relu(gate x)^2 * up x) "
                    "(BitNet b1.58 2B4T), swiglu down(silu(gate x) * up x) (Llama)")
              .choices(kFfnNames),
          core::key("ffn_dim", &C::ffn_dim, "hidden width of the feed-forward network")
              .range(1, 1 << 20)
              .computed([](const C& c) { return c.ffn == Ffn::kRelu2 ? 4 * c.dim : ((8 * c.dim / 3 + 63) / 64) * 64; },
                        "4 * dim for relu2, else 8 * dim / 3 rounded up to a multiple of 64"),
          core::key("sub_norm", &C::sub_norm, "SubLN: an RMSNorm before attn.o and ffn.down (BitNet)"),
          core::key("max_seq_len", &C::max_seq_len, "longest context in tokens (RoPE tables, exports)")
              .range(1, 1 << 20),
          core::key("rope_theta", &C::rope_theta, "RoPE base frequency").range(1.0, 1e9),
          core::key("norm_eps", &C::norm_eps, "RMSNorm epsilon").range(1e-12, 1e-1),
          core::key("tie_embeddings", &C::tie_embeddings, "the LM head shares the embedding matrix"),
          core::key("init_std", &C::init_std, "standard deviation of the random initialisation").range(1e-6, 1.0),
      },
      [](const core::Node& n, const C& c) {
        if (c.dim % c.n_heads != 0) n.fail("n_heads", fmt::format("a divisor of model.dim = {}", c.dim));
        if (c.head_dim() % 2 != 0) {
          n.fail("n_heads", fmt::format("a head size dim / n_heads that is even for RoPE, got {}", c.head_dim()));
        }
        if (c.n_heads % c.n_kv_heads != 0) {
          n.fail("n_kv_heads", fmt::format("a divisor of model.n_heads = {}", c.n_heads));
        }
      });
  return s;
}

LMConfig LMConfig::from_yaml(const core::Node& n) {
  LMConfig c;
  schema().parse_into(n, &c, {"kind"});
  return c;
}

void LMConfig::resolve_vocab(int64_t data_vocab, const std::string& where) {
  if (vocab_size == 0) vocab_size = data_vocab;
  if (vocab_size < 2) {
    throw core::ConfigError(fmt::format(
        "{} = {}: expected a vocabulary of at least 2 tokens (from the config or the data)", where, vocab_size));
  }
  if (vocab_size < data_vocab) {
    throw core::ConfigError(
        fmt::format("{} = {}: expected at least the data's vocabulary of {}", where, vocab_size, data_vocab));
  }
}

std::vector<std::string> LMConfig::differences(const LMConfig& o) const {
  std::vector<std::string> out;
  auto cmp = [&](const char* key, const auto& a, const auto& b) {
    if (a != b) out.push_back(fmt::format("model.{} = {} (source: {})", key, a, b));
  };
  cmp("vocab_size", vocab_size, o.vocab_size);
  cmp("dim", dim, o.dim);
  cmp("n_layers", n_layers, o.n_layers);
  cmp("n_heads", n_heads, o.n_heads);
  cmp("n_kv_heads", n_kv_heads, o.n_kv_heads);
  cmp("ffn", to_string(ffn), to_string(o.ffn));
  cmp("ffn_dim", ffn_dim, o.ffn_dim);
  cmp("sub_norm", sub_norm, o.sub_norm);
  // GGUF stores these as float32, and a config.json converted from a GGUF holds the float32's exact
  // double (9.999999747378752e-06 for 1e-5): values equal as float32 are the same setting.
  cmp("rope_theta", static_cast<float>(rope_theta), static_cast<float>(o.rope_theta));
  cmp("norm_eps", static_cast<float>(norm_eps), static_cast<float>(o.norm_eps));
  cmp("tie_embeddings", tie_embeddings, o.tie_embeddings);
  return out;
}

std::pair<at::Tensor, at::Tensor> rope_tables(int64_t pos, int64_t T, int64_t head_dim, double theta,
                                              const at::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto inv = at::pow(theta, -at::arange(0, head_dim, 2, opts) / static_cast<double>(head_dim));
  const auto t = at::arange(pos, pos + T, opts);
  const auto freqs = at::outer(t, inv);
  const auto emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(at::kFloat).to(device), emb.sin().to(at::kFloat).to(device)};
}

namespace {

// RoPE on x [B, T, H, D] (the projections' own layout, before the head transpose) with cos, sin
// [T, D] broadcast over heads: for the halves x1, x2 of each head, y1 = x1 c1 - x2 s1 and
// y2 = x2 c2 + x1 s2 (apply_rope's arithmetic, operation for operation); backward
// dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1. CPU float32 tensors run the row kernel
// (models/cpu/lm_kernels.hpp rope_rows); other tensors take apply_rope.
struct RopeBTHD : torch::autograd::Function<RopeBTHD> {
  static void run(const at::Tensor& in, const at::Tensor& cos, const at::Tensor& sin, bool backward, at::Tensor& out) {
    const int64_t B = in.size(0), T = in.size(1), H = in.size(2), D = in.size(3);
    const auto& lk = cpu::lm_kernels();  // vectorized for the CPU's instruction set
    at::parallel_for(0, B * T, std::max<int64_t>(1, 2048 / std::max<int64_t>(H * D, 1)), [&](int64_t b0, int64_t b1) {
      lk.rope_rows(in.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), T, H, D, backward,
                   out.data_ptr<float>(), b0, b1);
    });
  }
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    RECORD_FUNCTION("bitqat::rope", std::vector<c10::IValue>());
    ctx->save_for_backward({cos, sin});
    const auto xc = x.detach().contiguous();
    auto y = at::empty_like(xc);
    run(xc, cos, sin, false, y);
    return y;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
    const auto v = ctx->get_saved_variables();
    const auto gc = g[0].contiguous();
    auto dx = at::empty_like(gc);
    run(gc, v[0], v[1], true, dx);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor rope_bthd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat && cos.is_contiguous() &&
      sin.is_contiguous() && x.size(-1) % 2 == 0) {
    return RopeBTHD::apply(x, cos, sin);
  }
  return apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const auto x1 = x.narrow(-1, 0, half);
  const auto x2 = x.narrow(-1, half, half);
  const auto rot = at::cat({-x2, x1}, -1);
  return (x * cos.to(x.scalar_type()) + rot * sin.to(x.scalar_type()));
}

AttentionImpl::AttentionImpl(const LMConfig& c, const bitlinear::QuantSpec& qs, const bitlinear::QuantSpec& ks,
                             const bitlinear::QuantSpec& vs, const bitlinear::QuantSpec& os)
    : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim()) {
  q = register_module("q", make_linear(c.dim, n_heads * head_dim, qs, false, c.norm_eps));
  k = register_module("k", make_linear(c.dim, n_kv_heads * head_dim, ks, false, c.norm_eps));
  v = register_module("v", make_linear(c.dim, n_kv_heads * head_dim, vs, false, c.norm_eps));
  o = register_module("o", make_linear(n_heads * head_dim, c.dim, os, c.sub_norm, c.norm_eps));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, bitlinear::RMSNormImpl* norm, const at::Tensor& cos,
                                  const at::Tensor& sin, KVCache* cache, size_t layer) {
  const int64_t B = x.size(0), T = x.size(1);
  // At lambdas 1 on the CPU the norm and q/k/v are one fused node (BitLinear::forward_shared).
  const auto qkv = bitlinear::BitLinearImpl::forward_shared({q.get(), k.get(), v.get()}, x, norm);
  const auto &qx = qkv[0], &kx = qkv[1], &vx = qkv[2];
  if (tap && !cache) tap->insert(tap->end(), {qx, kx, vx});
  const auto qr = rope_bthd(qx.view({B, T, n_heads, head_dim}), cos, sin);
  const auto kr = rope_bthd(kx.view({B, T, n_kv_heads, head_dim}), cos, sin);
  const auto vr = vx.view({B, T, n_kv_heads, head_dim});
  if (!cache) {
    // Training and whole-sequence evaluation: [B, T, heads, d] in, [B, T, n_heads, d] out.
    return o->forward(causal_attention(qr, kr, vr).reshape({B, T, n_heads * head_dim}));
  }
  auto qh = qr.transpose(1, 2), kh = kr.transpose(1, 2), vh = vr.transpose(1, 2);
  const int64_t past = cache->pos;
  if (cache->k.size() <= layer) {
    cache->k.resize(layer + 1);
    cache->v.resize(layer + 1);
  }
  if (cache->k[layer].defined()) {
    kh = at::cat({cache->k[layer], kh}, 2);
    vh = at::cat({cache->v[layer], vh}, 2);
  }
  cache->k[layer] = kh;
  cache->v[layer] = vh;
  if (n_kv_heads != n_heads) {
    kh = kh.repeat_interleave(n_heads / n_kv_heads, 1);
    vh = vh.repeat_interleave(n_heads / n_kv_heads, 1);
  }
  at::Tensor y;
  if (past == 0) {
    y = at::scaled_dot_product_attention(qh, kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
  } else {
    // Query i (absolute position past + i) sees keys 0 .. past + i.
    const auto qi = at::arange(T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(1) + past;
    const auto kj = at::arange(past + T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(0);
    y = at::scaled_dot_product_attention(qh, kh, vh, kj.le(qi), 0.0, false);
  }
  return o->forward(y.transpose(1, 2).reshape({B, T, n_heads * head_dim}));
}

at::Tensor AttentionImpl::forward_static(const at::Tensor& x, bitlinear::RMSNormImpl* norm, const at::Tensor& cos,
                                         const at::Tensor& sin, StaticKVCache& cache, size_t layer,
                                         const at::Tensor& visible) {
  const auto qkv = bitlinear::BitLinearImpl::forward_shared({q.get(), k.get(), v.get()}, x, norm);
  const auto qr = rope_bthd(qkv[0].view({1, 1, n_heads, head_dim}), cos, sin);
  const auto kr = rope_bthd(qkv[1].view({1, 1, n_kv_heads, head_dim}), cos, sin);
  const auto vr = qkv[2].view({1, 1, n_kv_heads, head_dim});
  auto& kc = cache.k[layer];
  auto& vc = cache.v[layer];
  kc.index_copy_(2, cache.pos, kr.transpose(1, 2).to(kc.scalar_type()));
  vc.index_copy_(2, cache.pos, vr.transpose(1, 2).to(vc.scalar_type()));
  // Every position of the buffer, the ones past pos masked: shapes never change between steps.
  const auto y = at::scaled_dot_product_attention(qr.transpose(1, 2), kc.to(qr.scalar_type()), vc.to(qr.scalar_type()),
                                                  visible.view({1, 1, 1, -1}), 0.0, false, std::nullopt,
                                                  /*enable_gqa=*/n_kv_heads != n_heads);
  return o->forward(y.transpose(1, 2).reshape({1, 1, n_heads * head_dim}));
}

FFNImpl::FFNImpl(const LMConfig& c, const bitlinear::QuantSpec& gs, const bitlinear::QuantSpec& us,
                 const bitlinear::QuantSpec& ds)
    : kind(c.ffn) {
  if (c.gated()) gate = register_module("gate", make_linear(c.dim, c.ffn_dim, gs, false, c.norm_eps));
  up = register_module("up", make_linear(c.dim, c.ffn_dim, us, false, c.norm_eps));
  down = register_module("down", make_linear(c.ffn_dim, c.dim, ds, c.sub_norm, c.norm_eps));
}

at::Tensor FFNImpl::forward(const at::Tensor& x, bitlinear::RMSNormImpl* norm) {
  using bitlinear::BitLinearImpl;
  if (kind == Ffn::kRelu2) {
    const auto u = BitLinearImpl::forward_shared({up.get()}, x, norm)[0];
    bitlinear::InputNorm act;
    act.relu2 = true;  // down's SubLN is the norm
    const auto fused = BitLinearImpl::fused_forward({down.get()}, u, act);
    return fused.empty() ? down->forward(relu_squared(u)) : fused[0];
  }
  const auto gu = BitLinearImpl::forward_shared({gate.get(), up.get()}, x, norm);
  return down->forward((kind == Ffn::kRelu2Glu ? relu_squared(gu[0]) : at::silu(gu[0])) * gu[1]);
}

BlockImpl::BlockImpl(const LMConfig& c, size_t i, const bitlinear::QuantSpec& spec, const std::vector<std::string>& inc,
                     const std::vector<std::string>& exc) {
  const std::string p = fmt::format("layers.{}.", i);
  attn_norm = register_module("attn_norm", bitlinear::RMSNorm(c.dim, c.norm_eps));
  attn = register_module("attn",
                         Attention(c, spec_for(p + "attn.q", spec, inc, exc), spec_for(p + "attn.k", spec, inc, exc),
                                   spec_for(p + "attn.v", spec, inc, exc), spec_for(p + "attn.o", spec, inc, exc)));
  ffn_norm = register_module("ffn_norm", bitlinear::RMSNorm(c.dim, c.norm_eps));
  ffn = register_module("ffn", FFN(c, spec_for(p + "ffn.gate", spec, inc, exc), spec_for(p + "ffn.up", spec, inc, exc),
                                   spec_for(p + "ffn.down", spec, inc, exc)));
}

at::Tensor BlockImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, KVCache* cache,
                              size_t layer) {
  const auto h = x + attn->forward(x, attn_norm.get(), cos, sin, cache, layer);
  return h + ffn->forward(h, ffn_norm.get());
}

at::Tensor BlockImpl::forward_static(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                     StaticKVCache& cache, size_t layer, const at::Tensor& visible) {
  const auto h = x + attn->forward_static(x, attn_norm.get(), cos, sin, cache, layer, visible);
  return h + ffn->forward(h, ffn_norm.get());
}

BitLMImpl::BitLMImpl(LMConfig c, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude)
    : config(std::move(c)) {
  if (config.vocab_size < 2) throw std::invalid_argument("BitLM: vocab_size must be resolved (>= 2) before building");
  embed = register_module("embed", torch::nn::Embedding(config.vocab_size, config.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layers; ++i) {
    blocks.push_back(Block(config, static_cast<size_t>(i), spec, include, exclude));
    layers->push_back(blocks.back());
  }
  norm = register_module("norm", bitlinear::RMSNorm(config.dim, config.norm_eps));
  if (!config.tie_embeddings) {
    lm_head = register_module("lm_head",
                              torch::nn::Linear(torch::nn::LinearOptions(config.dim, config.vocab_size).bias(false)));
  }
  init_weights();
}

void BitLMImpl::init_weights() {
  at::NoGradGuard no_grad;
  const double std = config.init_std;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(config.n_layers));
  embed->weight.normal_(0.0, std);
  for (auto& b : blocks) {
    for (auto* l : {&b->attn->q, &b->attn->k, &b->attn->v}) (*l)->weight.normal_(0.0, std);
    b->attn->o->weight.normal_(0.0, out_std);
    if (b->ffn->gate) b->ffn->gate->weight.normal_(0.0, std);
    b->ffn->up->weight.normal_(0.0, std);
    b->ffn->down->weight.normal_(0.0, out_std);
  }
  if (lm_head) lm_head->weight.normal_(0.0, std);
}

at::Tensor BitLMImpl::forward(const at::Tensor& tokens, KVCache* cache) {
  return head(run(tokens, cache, {}, nullptr));
}

at::Tensor BitLMImpl::forward_hidden(const at::Tensor& tokens, const std::vector<int64_t>& layers,
                                     std::vector<at::Tensor>* hidden) {
  return head(run(tokens, nullptr, layers, hidden));
}

at::Tensor BitLMImpl::features(const at::Tensor& tokens, const std::vector<int64_t>& layers,
                               std::vector<at::Tensor>* hidden) {
  return run(tokens, nullptr, layers, hidden);
}

at::Tensor BitLMImpl::head_weight() const { return lm_head ? lm_head->weight : embed->weight; }

at::Tensor BitLMImpl::head(const at::Tensor& h) const {
  return at::linear(h, head_weight().to(h.scalar_type())).to(at::kFloat);
}

// The tables are built once per device and length, then sliced.
const std::pair<at::Tensor, at::Tensor>& BitLMImpl::rope_for(const at::Device& device, int64_t length) {
  auto& tables = rope_cache_[device.str()];
  if (!tables.first.defined() || tables.first.size(0) < length) {
    tables = rope_tables(0, std::max(config.max_seq_len, length), config.head_dim(), config.rope_theta, device);
  }
  return tables;
}

void BitLMImpl::load_static_cache(const KVCache& from, int64_t capacity, StaticKVCache& c) {
  if (capacity < 1 || capacity > config.max_seq_len || from.pos > capacity) {
    throw std::invalid_argument(fmt::format(
        "load_static_cache: capacity {} for {} cached tokens: expected cached <= capacity <= max_seq_len {}", capacity,
        from.pos, config.max_seq_len));
  }
  const auto device = embed->weight.device();
  const auto dtype = embed->weight.scalar_type();
  const auto nl = static_cast<size_t>(config.n_layers);
  if (c.capacity != capacity || c.k.size() != nl) {
    c = StaticKVCache{};
    c.capacity = capacity;
    const auto opts = at::TensorOptions().device(device).dtype(dtype);
    for (size_t i = 0; i < nl; ++i) {
      c.k.push_back(at::zeros({1, config.n_kv_heads, capacity, config.head_dim()}, opts));
      c.v.push_back(at::zeros({1, config.n_kv_heads, capacity, config.head_dim()}, opts));
    }
    c.pos = at::zeros({1}, at::TensorOptions().device(device).dtype(at::kLong));
  }
  for (size_t i = 0; i < nl; ++i) {
    c.k[i].zero_();
    c.v[i].zero_();
    if (from.pos > 0) {
      if (i >= from.k.size() || from.k[i].size(0) != 1 || from.k[i].size(2) != from.pos) {
        throw std::invalid_argument("load_static_cache: the cache does not hold one sequence of every layer");
      }
      c.k[i].narrow(2, 0, from.pos).copy_(from.k[i]);
      c.v[i].narrow(2, 0, from.pos).copy_(from.v[i]);
    }
  }
  c.pos.fill_(from.pos);
}

at::Tensor BitLMImpl::decode_step(const at::Tensor& token, StaticKVCache& cache) {
  const auto& tables = rope_for(token.device(), cache.capacity);
  const auto cos = tables.first.index_select(0, cache.pos);
  const auto sin = tables.second.index_select(0, cache.pos);
  const auto visible =
      at::arange(cache.capacity, at::TensorOptions().device(token.device()).dtype(at::kLong)).le(cache.pos);
  auto h = embed->forward(token);
  for (size_t i = 0; i < blocks.size(); ++i) h = blocks[i]->forward_static(h, cos, sin, cache, i, visible);
  h = norm->forward(h);
  cache.pos.add_(1);
  return head(h).select(1, 0);
}

at::Tensor BitLMImpl::run(const at::Tensor& tokens, KVCache* cache, const std::vector<int64_t>& layers,
                          std::vector<at::Tensor>* hidden) {
  const int64_t T = tokens.size(1);
  const int64_t pos = cache ? cache->pos : 0;
  const auto& tables = rope_for(tokens.device(), pos + T);
  const auto cos = tables.first.narrow(0, pos, T);
  const auto sin = tables.second.narrow(0, pos, T);
  auto h = embed->forward(tokens);
  if (hidden) hidden->assign(layers.size(), at::Tensor());
  bool read_outside = false;  // the stream entering block i is also a hidden state (not recomputed then)
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (cache) {
      h = blocks[i]->forward(h, cos, sin, cache, i);
    } else {
      const auto b = blocks[i].ptr();
      h = block_runner.run(
          i, *b, [b, i](const std::vector<at::Tensor>& in) { return b->forward(in[0], in[1], in[2], nullptr, i); },
          {h, cos, sin}, /*recomputable=*/!read_outside);
    }
    read_outside = false;
    for (size_t j = 0; j < layers.size(); ++j) {
      if (hidden && layers[j] == static_cast<int64_t>(i)) {
        (*hidden)[j] = h;
        read_outside = true;
      }
    }
  }
  if (cache) cache->pos += T;
  return norm->forward(h);
}

at::Tensor BitLMImpl::loss(const at::Tensor& tokens, const at::Tensor& targets) {
  const auto h = features(tokens);
  return head_loss(h.reshape({-1, h.size(-1)}), head_weight(), targets.reshape({-1})).total;
}

}  // namespace bitqat::models
