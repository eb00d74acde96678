#include "interop/export_gguf.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/exportable.hpp"
#include "interop/gguf_tokenizer.hpp"
#include "interop/llama_tensor_names.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;
namespace gguf = checkpoints::gguf;
namespace {

using bitlinear::Granularity;
using bitlinear::WeightQuant;
using gguf::GgmlType;

// Whether the export writes type `t` from integer codes (the block linears) or from floats.
bool written(const gguf::TypeTraits& t, bool codes) {
  return codes ? t.from_codes != nullptr : t.from_float != nullptr;
}

bool is_written(GgmlType type, bool codes) {
  const auto* t = gguf::find_type_traits(static_cast<uint32_t>(type));
  return t && written(*t, codes);
}

// A type's name as the CLI spells it: "tq2_0".
std::string cli_name(const gguf::TypeTraits& t) {
  std::string s(t.name);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// "tq1_0, tq2_0, q1_0 or q2_0": the written types of the table, for messages.
std::string written_type_names(bool codes) {
  const auto names = gguf_type_choices(codes);
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

// The narrowing of a count into a uint32 metadata value, checked (config limits keep them far below).
gguf::Value u32(int64_t v, const char* key) {
  if (v < 0 || v > std::numeric_limits<uint32_t>::max()) {
    throw core::UserError(fmt::format("gguf export: {} = {} does not fit the uint32 GGUF stores", key, v));
  }
  return gguf::Value::u32(static_cast<uint32_t>(v));
}

gguf::Value f32(double v, const char* key) {
  const auto f = static_cast<float>(v);
  if (!std::isfinite(f) || (v != 0.0 && f == 0.0f)) {
    throw core::UserError(fmt::format("gguf export: {} = {} does not fit the float32 GGUF stores", key, v));
  }
  return gguf::Value::f32(f);
}

void check_linear(const std::string& name, const bitlinear::BitLinearImpl& l, GgmlType type) {
  if (l.options.quant.weight.type == WeightQuant::kNone) {
    if (!l.has_latent_weights()) throw core::UserError(fmt::format("gguf export: {} is already packed", name));
    return;  // written as a float tensor
  }
  const int64_t bs = gguf::block_size(type);
  const char* t = gguf::to_string(type);
  LinearRequirements req;
  req.format = "gguf export";
  req.holder = fmt::format("a {} tensor", t);
  // Binary weights are codes -1 and 1, which every written type holds; ternary ones need a 0 too.
  req.weight_types = gguf::holds_code(type, 0) ? std::vector<WeightQuant>{WeightQuant::kTernary, WeightQuant::kBinary}
                                               : std::vector<WeightQuant>{WeightQuant::kBinary};
  req.granularities = {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup};
  req.granularity_reason = fmt::format("a {} block carries one scale; use per_tensor, per_channel or per_group", t);
  req.group_multiple = bs;
  req.group_reason = fmt::format(
      "a {} block of {} weights carries one scale, so groups must be a multiple of {} (group_size {} maps one group "
      "to one block)",
      t, bs, bs, bs);
  req.in_multiple = bs;
  req.in_reason = fmt::format(
      "{} rows are whole blocks of {} weights (set model.dim and model.ffn_dim to multiples of {})", t, bs, bs);
  req.per_token_8bit_activations = true;
  check_exportable(name, l, req);
}

// Block scales [N, K / block] of a layer's quantized weight.
at::Tensor layer_block_scales(const bitlinear::QuantizedWeight& q, int64_t n, int64_t k, int64_t bs) {
  const int64_t blocks = k / bs;
  const auto s = q.scales.detach().to(at::kCPU, at::kFloat);
  switch (q.spec.granularity) {
    case Granularity::kPerTensor:
      return s.reshape({1, 1}).expand({n, blocks}).contiguous();
    case Granularity::kPerChannel:
      return s.reshape({n, 1}).expand({n, blocks}).contiguous();
    case Granularity::kPerGroup:
      return s.reshape({n, -1}).repeat_interleave(q.spec.group_size / bs, 1).narrow(1, 0, blocks).contiguous();
    case Granularity::kPerKernel:
      break;
  }
  throw std::logic_error("layer_block_scales: per_kernel scales in a linear layer");
}

// Every block scale becomes an fp16 `d`: it must be finite, at most 65504, and a nonzero scale must
// not round to 0 (below half of fp16's smallest subnormal, 2^-24, the layer would vanish).
void check_fp16_scales(const std::string& tname, const at::Tensor& scales, GgmlType type) {
  const auto a = scales.abs();
  const auto bad = at::isfinite(scales).logical_not() | a.gt(65504.0) | (a.gt(0.0) & a.lt(std::ldexp(1.0, -25)));
  if (!bad.any().item<bool>()) return;
  const auto i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  throw core::UserError(fmt::format(
      "gguf export: {} has block scale {} (block {}), which an fp16 d cannot hold (finite, |d| <= 65504, nonzero "
      "scales >= 2^-25); the layer's weights are out of range for {}",
      tname, scales.reshape({-1})[i].item<double>(), i, gguf::to_string(type)));
}

// F16 float tensors: every value must be finite and within fp16's range.
gguf::Tensor checked_float_tensor(const std::string& tname, const at::Tensor& v, GgmlType type) {
  if (type == GgmlType::kF16) {
    const auto x = v.detach().to(at::kCPU, at::kFloat);
    const auto bad = at::isfinite(x).logical_not() | x.abs().gt(65504.0);
    if (bad.any().item<bool>()) {
      const auto i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
      throw core::UserError(fmt::format(
          "gguf export: {} holds {} (element {}), which F16 cannot hold (|x| <= 65504); use --gguf-float f32", tname,
          x.reshape({-1})[i].item<double>(), i));
    }
  }
  return gguf::float_tensor(tname, v, type);
}

// llama.cpp's llama graph uses "normal" RoPE on consecutive pairs; bitqat's rotate-half pairs row j
// with row j + head_dim / 2 of each head. Rows [N, ...] -> the GGUF row order (see the header).
at::Tensor permute_rope_rows(const at::Tensor& rows, int64_t heads) {
  const auto n = rows.size(0);
  std::vector<int64_t> shape = {heads, 2, n / heads / 2};
  for (int64_t d = 1; d < rows.dim(); ++d) shape.push_back(rows.size(d));
  return rows.reshape(shape).transpose(1, 2).reshape(rows.sizes()).contiguous();
}

struct Writer {
  const models::BitLMImpl& lm;
  const GgufExportOptions& o;
  GgufArch arch;

  gguf::Tensor tensor(const LlamaTensorEntry& e) const {
    const auto name = e.gguf + ".weight";
    switch (e.row->role) {
      case TensorRole::kNorm:
        return gguf::float_tensor(name, llama_weight(lm, e));
      case TensorRole::kEmbedding:
      case TensorRole::kHead:
        return checked_float_tensor(name, llama_weight(lm, e), o.float_type);
      case TensorRole::kLinear:
        break;
    }
    // q and k of the llama architecture: rows permuted for llama.cpp's RoPE.
    return linear(name, llama_linear(lm, e), arch == GgufArch::kLlama ? e.rope_heads : 0);
  }

  gguf::Tensor linear(const std::string& tname, const bitlinear::BitLinearImpl& l, int64_t rope_heads) const {
    if (l.options.quant.weight.type == WeightQuant::kNone) {
      const auto w = rope_heads > 0 ? permute_rope_rows(l.weight.detach(), rope_heads) : l.weight.detach();
      return checked_float_tensor(tname, w, o.float_type);
    }
    const auto q = l.quantized_weight();
    const int64_t n = l.options.out_features, k = l.options.in_features;
    auto scales = layer_block_scales(q, n, k, gguf::block_size(o.type));
    auto codes = q.codes;
    if (rope_heads > 0) {
      scales = permute_rope_rows(scales, rope_heads);
      codes = permute_rope_rows(codes, rope_heads);
    }
    check_fp16_scales(tname, scales, o.type);
    return gguf::block_tensor(tname, codes, scales, o.type);
  }
};

void check_ffn(const models::LMConfig& c, const GgufExportOptions& o, std::vector<std::string>* warnings) {
  if (c.ffn == models::Ffn::kSwiglu) return;
  if (c.ffn == models::Ffn::kRelu2Glu && o.force_relu2 && c.sub_norm) {
    if (warnings) {
      warnings->push_back(
          "model.ffn = relu2_glu written as bitnet with hidden_activation relu2 (--gguf-force-relu2): llama.cpp's "
          "bitnet graph computes a SiLU-gated FFN whatever hidden_activation says, so llama.cpp will not compute "
          "what was trained; use this file only with a runtime that honours bitnet.hidden_activation");
    }
    return;
  }
  throw core::UserError(fmt::format(
      "gguf export: model.ffn = {}: llama.cpp's bitnet and llama graphs compute a SiLU-gated FFN, down(silu(gate x) "
      "* up x), so llama.cpp would not compute what this model learned; train with model.ffn: swiglu{}",
      models::to_string(c.ffn),
      c.ffn == models::Ffn::kRelu2Glu && c.sub_norm
          ? " (or pass --gguf-force-relu2 to write relu2 anyway, for runtimes that honour bitnet.hidden_activation)"
          : (c.ffn == models::Ffn::kRelu2 ? " (an ungated relu2 FFN has no gate projection for either graph)" : "")));
}

void check_arch(const models::LMConfig& c, GgufArch arch) {
  if (arch == GgufArch::kBitnet && !c.tie_embeddings) {
    throw core::UserError(
        "gguf export: model.tie_embeddings = false with model.sub_norm = true: llama.cpp's bitnet graph uses "
        "token_embd as the output layer; expected tie_embeddings true (or sub_norm false for the llama "
        "architecture, which has an output tensor)");
  }
}

GgufMetadata tokenizer_for(const models::LMConfig& c, const GgufExportOptions& o) {
  if (!o.tokenizer_source.empty()) {
    if (auto t = source_tokenizer(o.tokenizer_source, c.vocab_size)) return *t;
  }
  if (c.vocab_size == 256) return byte_tokenizer();
  throw core::UserError(fmt::format(
      "gguf export: model.vocab_size = {} and no tokenizer: the run's init_from ({}) carries none (a Hugging Face "
      "directory's tokenizer.json or a GGUF file's tokenizer.* keys), and only vocabulary-256 (byte-level) models "
      "get the byte tokenizer",
      c.vocab_size, o.tokenizer_source.empty() ? "none" : o.tokenizer_source));
}

}  // namespace

const char* to_string(GgufArch a) { return a == GgufArch::kBitnet ? "bitnet" : "llama"; }

std::vector<std::string> gguf_type_choices(bool codes) {
  std::vector<std::string> names;
  for (const auto& t : gguf::type_table()) {
    if (written(t, codes)) names.push_back(cli_name(t));
  }
  return names;
}

namespace {

GgmlType parse_written_type(const std::string& s, bool codes, const char* option) {
  for (const auto& t : gguf::type_table()) {
    if (written(t, codes) && cli_name(t) == s) return t.type;
  }
  throw core::UserError(fmt::format("{} {}: expected {}", option, s, written_type_names(codes)));
}

}  // namespace

GgmlType parse_gguf_type(const std::string& s) { return parse_written_type(s, /*codes=*/true, "--gguf-type"); }
GgmlType parse_gguf_float_type(const std::string& s) { return parse_written_type(s, /*codes=*/false, "--gguf-float"); }

GgufArch check_gguf_compatible(const models::BitLMImpl& lm, const GgufExportOptions& o,
                               std::vector<std::string>* warnings) {
  if (!is_written(o.type, /*codes=*/true)) {
    throw core::UserError(fmt::format("gguf export: the weight type must be {}", written_type_names(/*codes=*/true)));
  }
  if (!is_written(o.float_type, /*codes=*/false)) {
    throw core::UserError(fmt::format("gguf export: the float type must be {}", written_type_names(/*codes=*/false)));
  }
  const auto& c = lm.config;
  const auto arch = c.sub_norm ? GgufArch::kBitnet : GgufArch::kLlama;
  check_ffn(c, o, warnings);
  check_arch(c, arch);
  for (const auto& e : llama_tensors(c)) {
    if (e.row->role == TensorRole::kLinear) check_linear(e.bitqat, llama_linear(lm, e), o.type);
  }
  return arch;
}

namespace {

// The file's contents for a model check_gguf_compatible accepted as `arch`.
gguf::File gguf_contents(const models::BitLMImpl& lm, const GgufExportOptions& o, GgufArch arch) {
  const auto& c = lm.config;
  const std::string a = to_string(arch);
  gguf::File f;
  f.metadata = {
      {"general.architecture", gguf::Value::str(a)},
      {"general.name", gguf::Value::str(o.name)},
      {"general.alignment", gguf::Value::u32(gguf::kDefaultAlignment)},
      {"general.file_type", u32(gguf::type_traits(o.type).file_type, "general.file_type")},
      {"general.quantization_version", gguf::Value::u32(2)},
      {a + ".vocab_size", u32(c.vocab_size, "model.vocab_size")},
      {a + ".context_length", u32(c.max_seq_len, "model.max_seq_len")},
      {a + ".embedding_length", u32(c.dim, "model.dim")},
      {a + ".block_count", u32(c.n_layers, "model.n_layers")},
      {a + ".feed_forward_length", u32(c.ffn_dim, "model.ffn_dim")},
      {a + ".attention.head_count", u32(c.n_heads, "model.n_heads")},
      {a + ".attention.head_count_kv", u32(c.n_kv_heads, "model.n_kv_heads")},
      {a + ".attention.layer_norm_rms_epsilon", f32(c.norm_eps, "model.norm_eps")},
      {a + ".rope.freq_base", f32(c.rope_theta, "model.rope_theta")},
      {a + ".rope.dimension_count", u32(c.head_dim(), "model.dim / model.n_heads")},
  };
  if (arch == GgufArch::kBitnet) {
    f.metadata.emplace_back("bitnet.hidden_activation",
                            gguf::Value::str(c.ffn == models::Ffn::kSwiglu ? "silu" : "relu2"));
  }
  for (auto& kv : tokenizer_for(c, o)) f.metadata.push_back(std::move(kv));
  const Writer w{lm, o, arch};
  for (const auto& e : llama_tensors(c)) f.tensors.push_back(w.tensor(e));
  return f;
}

}  // namespace

gguf::File gguf_from_lm(const models::BitLMImpl& lm, const GgufExportOptions& o) {
  return gguf_contents(lm, o, check_gguf_compatible(lm, o));
}

GgufExport export_gguf(const models::BitLMImpl& lm, const std::string& out_path, const GgufExportOptions& o,
                       std::vector<std::string>* warnings) {
  check_new_output(out_path);
  const auto arch = check_gguf_compatible(lm, o, warnings);
  const auto bytes = gguf::encode(gguf_contents(lm, o, arch));
  core::write_file_atomic(out_path, bytes);
  return {static_cast<int64_t>(bytes.size()), arch};
}

}  // namespace bitqat::interop
