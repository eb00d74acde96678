#include "interop/export_gguf.hpp"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/exportable.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;
namespace gguf = checkpoints::gguf;
namespace {

using bitlinear::BitLinear;
using bitlinear::Granularity;

constexpr uint32_t kFileTypeTQ1_0 = 36;  // llama_ftype LLAMA_FTYPE_MOSTLY_TQ1_0
constexpr uint32_t kFileTypeTQ2_0 = 37;  // llama_ftype LLAMA_FTYPE_MOSTLY_TQ2_0

void check_linear(const std::string& name, const BitLinear& l) {
  LinearRequirements req;
  req.format = "gguf export";
  req.holder = "the bitnet layout";
  req.granularities = {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup};
  req.granularity_reason = "a GGUF block carries one scale; use per_tensor, per_channel or per_group";
  req.group_multiple = gguf::kQK;
  req.group_reason = fmt::format("a GGUF block of {} weights carries one scale, so groups must be a multiple of {}",
                                 gguf::kQK, gguf::kQK);
  req.in_multiple = gguf::kQK;
  req.in_reason = fmt::format(
      "TQ1_0 / TQ2_0 rows are whole blocks of {} weights (set model.dim and model.ffn_dim to multiples of {})",
      gguf::kQK, gguf::kQK);
  check_exportable(name, *l, req);
}

// Block scales [N, K / 256] of a layer's quantized weight.
at::Tensor block_scales(const bitlinear::QuantizedWeight& q, int64_t n, int64_t k) {
  const int64_t blocks = k / gguf::kQK;
  const auto s = q.scales.detach().to(at::kCPU, at::kFloat);
  switch (q.spec.granularity) {
    case Granularity::kPerTensor:
      return s.reshape({1, 1}).expand({n, blocks}).contiguous();
    case Granularity::kPerChannel:
      return s.reshape({n, 1}).expand({n, blocks}).contiguous();
    case Granularity::kPerGroup:
      return s.repeat_interleave(q.spec.group_size / gguf::kQK, 1).narrow(1, 0, blocks);
    case Granularity::kPerKernel:
      break;
  }
  throw std::logic_error("block_scales: per_kernel scales in a linear layer");
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return s;
}

// Every block scale becomes an fp16 `d`: it must be finite, at most 65504, and a nonzero scale must
// not round to 0 (below fp16's smallest subnormal, 2^-24, the layer would vanish).
void check_fp16_scales(const std::string& tname, const at::Tensor& scales) {
  const auto a = scales.abs();
  const auto bad = at::isfinite(scales).logical_not() | a.gt(65504.0) | (a.gt(0.0) & a.lt(std::ldexp(1.0, -25)));
  if (!bad.any().item<bool>()) return;
  const auto i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  throw core::UserError(fmt::format(
      "gguf export: {} has block scale {} (block {}), which an fp16 d cannot hold (finite, |d| <= 65504, nonzero "
      "scales >= 2^-25); the layer's weights are out of range for TQ1_0 / TQ2_0",
      tname, scales.reshape({-1})[i].item<double>(), i));
}

}  // namespace

std::vector<std::string> gpt2_byte_tokens() {
  // Printable bytes keep their code point; the others map, in byte order, to 256, 257, ...
  std::vector<std::string> out(256);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = utf8(printable ? b : next++);
  }
  return out;
}

void check_gguf_compatible(const models::BitLMImpl& lm) {
  const auto& c = lm.config;
  if (c.ffn != "relu2_glu") {
    throw core::UserError(
        fmt::format("gguf export: model.ffn = {}: llama.cpp's bitnet graph is gated, down(act(gate x) * up x) with "
                    "hidden_activation relu2; expected relu2_glu",
                    c.ffn));
  }
  if (!c.sub_norm) {
    throw core::UserError(
        "gguf export: model.sub_norm = false: the bitnet layout needs attn_sub_norm and "
        "ffn_sub_norm; expected true");
  }
  if (!c.tie_embeddings) {
    throw core::UserError(
        "gguf export: model.tie_embeddings = false: llama.cpp's bitnet graph uses token_embd as "
        "the output layer; expected true");
  }
  if (c.vocab_size != 256) {
    throw core::UserError(
        fmt::format("gguf export: model.vocab_size = {}: the export writes a byte-level tokenizer; "
                    "expected a byte-level model (vocabulary 256)",
                    c.vocab_size));
  }
  for (size_t i = 0; i < lm.blocks.size(); ++i) {
    const auto& b = lm.blocks[i];
    const std::string p = fmt::format("layers.{}.", i);
    check_linear(p + "attn.q", b->attn->q);
    check_linear(p + "attn.k", b->attn->k);
    check_linear(p + "attn.v", b->attn->v);
    check_linear(p + "attn.o", b->attn->o);
    check_linear(p + "ffn.gate", b->ffn->gate);
    check_linear(p + "ffn.up", b->ffn->up);
    check_linear(p + "ffn.down", b->ffn->down);
  }
}

gguf::File gguf_from_lm(const models::BitLMImpl& lm, gguf::GgmlType type, const std::string& name) {
  if (type != gguf::GgmlType::kTQ1_0 && type != gguf::GgmlType::kTQ2_0) {
    throw core::UserError("gguf export: the ternary type must be tq2_0 or tq1_0");
  }
  check_gguf_compatible(lm);
  const auto& c = lm.config;
  using gguf::Value;
  using gguf::ValueType;
  const auto u32 = [](int64_t v) { return Value::u32(static_cast<uint32_t>(v)); };
  gguf::File f;
  nlohmann::json tokens = gpt2_byte_tokens();
  f.metadata = {
      {"general.architecture", Value::str("bitnet")},
      {"general.name", Value::str(name)},
      {"general.alignment", Value::u32(gguf::kDefaultAlignment)},
      {"general.file_type", Value::u32(type == gguf::GgmlType::kTQ1_0 ? kFileTypeTQ1_0 : kFileTypeTQ2_0)},
      {"general.quantization_version", Value::u32(2)},
      {"bitnet.vocab_size", u32(c.vocab_size)},
      {"bitnet.context_length", u32(c.max_seq_len)},
      {"bitnet.embedding_length", u32(c.dim)},
      {"bitnet.block_count", u32(c.n_layers)},
      {"bitnet.feed_forward_length", u32(c.ffn_dim)},
      {"bitnet.attention.head_count", u32(c.n_heads)},
      {"bitnet.attention.head_count_kv", u32(c.n_kv_heads)},
      {"bitnet.attention.layer_norm_rms_epsilon", Value::f32(static_cast<float>(c.norm_eps))},
      {"bitnet.rope.freq_base", Value::f32(static_cast<float>(c.rope_theta))},
      {"bitnet.rope.dimension_count", u32(c.head_dim())},
      {"bitnet.hidden_activation", Value::str("relu2")},
      {"tokenizer.ggml.model", Value::str("gpt2")},
      {"tokenizer.ggml.pre", Value::str("default")},
      {"tokenizer.ggml.tokens", Value::array(ValueType::kString, tokens)},
      {"tokenizer.ggml.token_type", Value::array(ValueType::kInt32, std::vector<int32_t>(256, 1))},
      {"tokenizer.ggml.merges", Value::array(ValueType::kString, nlohmann::json::array())},
      {"tokenizer.ggml.bos_token_id", Value::u32(0)},
      {"tokenizer.ggml.eos_token_id", Value::u32(0)},
      {"tokenizer.ggml.add_bos_token", Value::boolean(false)},
      {"tokenizer.ggml.add_eos_token", Value::boolean(false)},
  };
  auto linear = [&](const std::string& tname, const BitLinear& l) {
    const auto q = l->quantized_weight();
    const int64_t n = l->options.out_features, k = l->options.in_features;
    const auto scales = block_scales(q, n, k);
    check_fp16_scales(tname, scales);
    f.tensors.push_back(gguf::ternary_tensor(tname, q.codes, scales, type));
  };
  f.tensors.push_back(gguf::float_tensor("token_embd.weight", lm.embed->weight));
  for (size_t i = 0; i < lm.blocks.size(); ++i) {
    const auto& b = lm.blocks[i];
    const std::string p = fmt::format("blk.{}.", i);
    f.tensors.push_back(gguf::float_tensor(p + "attn_norm.weight", b->attn_norm->weight));
    linear(p + "attn_q.weight", b->attn->q);
    linear(p + "attn_k.weight", b->attn->k);
    linear(p + "attn_v.weight", b->attn->v);
    linear(p + "attn_output.weight", b->attn->o);
    f.tensors.push_back(gguf::float_tensor(p + "attn_sub_norm.weight", b->attn->o->norm->weight));
    f.tensors.push_back(gguf::float_tensor(p + "ffn_norm.weight", b->ffn_norm->weight));
    linear(p + "ffn_gate.weight", b->ffn->gate);
    linear(p + "ffn_up.weight", b->ffn->up);
    linear(p + "ffn_down.weight", b->ffn->down);
    f.tensors.push_back(gguf::float_tensor(p + "ffn_sub_norm.weight", b->ffn->down->norm->weight));
  }
  f.tensors.push_back(gguf::float_tensor("output_norm.weight", lm.norm->weight));
  return f;
}

int64_t export_gguf(const models::BitLMImpl& lm, const std::string& out_path, gguf::GgmlType type,
                    const std::string& name) {
  if (fs::exists(out_path)) {
    throw core::UserError(
        fmt::format("{} already exists; choose a new --out path (exports never overwrite)", out_path));
  }
  const auto bytes = gguf::encode(gguf_from_lm(lm, type, name));
  core::write_file_atomic(out_path, bytes);
  return static_cast<int64_t>(bytes.size());
}

}  // namespace bitqat::interop
