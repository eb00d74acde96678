#include "interop/gguf_llama.hpp"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/llama_tensor_names.hpp"

namespace bitqat::interop {
namespace {

namespace gguf = checkpoints::gguf;
using gguf::ValueType;

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

class Meta {
 public:
  Meta(const gguf::File& f, std::string origin) : f_(f), origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& value, const std::string& expected) const {
    throw core::UserError(fmt::format("{}: {} = {}: {}", origin_, key, value, expected));
  }

  std::string str(const std::string& key) const {
    const auto* v = f_.find(key);
    if (!v) throw core::UserError(fmt::format("{}: metadata {} is missing (a GGUF model needs it)", origin_, key));
    if (v->type != ValueType::kString) fail(key, v->data.dump(), "expected a string");
    return v->data.get<std::string>();
  }

  bool has(const std::string& key) const { return f_.find(key) != nullptr; }

  int64_t integer(const std::string& key, std::optional<int64_t> fallback, int64_t lo, int64_t hi) const {
    const auto* v = f_.find(key);
    if (!v) {
      if (fallback) return *fallback;
      throw core::UserError(
          fmt::format("{}: metadata {} is missing (a llama-architecture GGUF needs it)", origin_, key));
    }
    if (!is_integer(v->type) || v->data.is_array()) fail(key, v->data.dump(), "expected an integer");
    const bool too_big = v->data.is_number_unsigned() && v->data.get<uint64_t>() > static_cast<uint64_t>(hi);
    const auto x = too_big ? hi + 1 : v->data.get<int64_t>();
    if (x < lo || x > hi) fail(key, v->data.dump(), fmt::format("expected an integer in [{}, {}]", lo, hi));
    return x;
  }

  // A float32 value is the double it exactly is (the float nearest 1e-5 is 9.999999747378752e-06), as
  // transformers writes it into the config.json of a model converted from a GGUF; LMConfig compares
  // such settings at float32 precision, so a config that says 1e-5 matches either source.
  double number(const std::string& key, std::optional<double> fallback, double lo, double hi) const {
    const auto* v = f_.find(key);
    if (!v) {
      if (fallback) return *fallback;
      throw core::UserError(
          fmt::format("{}: metadata {} is missing (a llama-architecture GGUF needs it)", origin_, key));
    }
    double x = 0;
    if (v->type == ValueType::kFloat32) {
      x = static_cast<double>(v->data.get<float>());
    } else if (v->type == ValueType::kFloat64 || is_integer(v->type)) {
      x = v->data.get<double>();
    } else {
      fail(key, v->data.dump(), "expected a number");
    }
    if (!(x >= lo && x <= hi)) fail(key, v->data.dump(), fmt::format("expected a number in [{}, {}]", lo, hi));
    return x;
  }

 private:
  const gguf::File& f_;
  std::string origin_;
};

}  // namespace

models::LMConfig lm_config_from_gguf(const gguf::File& f, const std::string& origin) {
  const Meta m(f, origin);
  const auto arch = m.str("general.architecture");
  if (arch != "llama") {
    m.fail("general.architecture", "\"" + arch + "\"",
           "expected \"llama\" (bitqat imports llama-architecture GGUFs: token_embd, blk.N.attn_q, ..., ffn_gate)");
  }
  models::LMConfig c;
  c.dim = m.integer("llama.embedding_length", std::nullopt, 2, 1 << 16);
  c.n_layers = m.integer("llama.block_count", std::nullopt, 1, 1024);
  c.n_heads = m.integer("llama.attention.head_count", std::nullopt, 1, 1024);
  c.n_kv_heads = m.integer("llama.attention.head_count_kv", c.n_heads, 1, 1024);
  c.ffn_dim = m.integer("llama.feed_forward_length", std::nullopt, 1, 1 << 20);
  c.max_seq_len = m.integer("llama.context_length", 2048, 1, 1 << 20);
  c.rope_theta = m.number("llama.rope.freq_base", 10000.0, 1.0, 1e9);
  c.norm_eps = m.number("llama.attention.layer_norm_rms_epsilon", std::nullopt, 1e-12, 1e-1);
  c.ffn = models::Ffn::kSwiglu;
  c.sub_norm = false;
  c.tie_embeddings = f.tensor(llama_tensor_name(LlamaTensor::kOutput).gguf + std::string(".weight")) == nullptr;
  if (const auto* emb = f.tensor(llama_tensor_name(LlamaTensor::kTokenEmbd).gguf + std::string(".weight"));
      emb && emb->ne.size() == 2) {
    c.vocab_size = m.integer("llama.vocab_size", emb->ne[1], 2, int64_t{1} << 24);
  } else {
    c.vocab_size = m.integer("llama.vocab_size", std::nullopt, 2, int64_t{1} << 24);
  }

  if (c.dim % c.n_heads != 0) {
    m.fail("llama.attention.head_count", std::to_string(c.n_heads),
           fmt::format("expected a divisor of llama.embedding_length = {}", c.dim));
  }
  if (c.head_dim() % 2 != 0) {
    m.fail("llama.attention.head_count", std::to_string(c.n_heads),
           fmt::format("expected an even head size embedding_length / head_count, got {}", c.head_dim()));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    m.fail("llama.attention.head_count_kv", std::to_string(c.n_kv_heads),
           fmt::format("expected a divisor of llama.attention.head_count = {}", c.n_heads));
  }
  for (const char* key : {"llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"}) {
    if (m.has(key) && m.integer(key, std::nullopt, 0, 1 << 20) != c.head_dim()) {
      m.fail(key, std::to_string(m.integer(key, std::nullopt, 0, 1 << 20)),
             fmt::format("expected the head size embedding_length / head_count = {} (bitqat rotates and attends "
                         "over whole heads)",
                         c.head_dim()));
    }
  }
  if (m.has("llama.rope.scaling.type") && m.str("llama.rope.scaling.type") != "none") {
    m.fail("llama.rope.scaling.type", "\"" + m.str("llama.rope.scaling.type") + "\"",
           "expected none (RoPE scaling is not supported)");
  }
  if (m.has("llama.expert_count") && m.integer("llama.expert_count", std::nullopt, 0, 1 << 20) > 0) {
    m.fail("llama.expert_count", std::to_string(m.integer("llama.expert_count", std::nullopt, 0, 1 << 20)),
           "expected 0 (mixture-of-experts models are not supported)");
  }
  return c;
}

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || std::filesystem::file_size(path, ec) < 4) return false;
  return core::read_file_range(path, 0, 4) == "GGUF";
}

at::Tensor unpermute_rope_rows(const at::Tensor& w, int64_t n_heads) {
  // llama.cpp: w.reshape(n_heads, 2, head_dim / 2, in).swapaxes(1, 2); the inverse swaps back.
  const int64_t half = w.size(0) / n_heads / 2;
  return w.reshape({n_heads, half, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

GGUFCheckpoint load_gguf_llama(const std::string& path) {
  GGUFCheckpoint ck;
  ck.file = gguf::load(path);
  ck.config = lm_config_from_gguf(ck.file, path);
  if (ck.file.tensor("rope_freqs.weight")) {
    throw core::UserError(
        fmt::format("{}: tensor rope_freqs.weight: RoPE frequency scaling (Llama 3.1 style) is not supported", path));
  }
  std::set<std::string> used;
  for (const auto& e : llama_tensors(ck.config)) {
    const auto gname = e.gguf + ".weight";
    const auto& shape = e.shape;
    const auto* t = ck.file.tensor(gname);
    if (!t) {
      throw core::UserError(
          fmt::format("{}: tensor '{}' is missing (a llama model with this metadata needs it)", path, gname));
    }
    const std::vector<int64_t> torch_shape(t->ne.rbegin(), t->ne.rend());
    if (torch_shape != shape) {
      throw core::UserError(fmt::format("{}: tensor '{}' has shape [{}] (torch order), the metadata implies [{}]", path,
                                        gname, fmt::join(torch_shape, ", "), fmt::join(shape, ", ")));
    }
    // A copy of the tensor's entry (it views the mapping), so the lazy tensors stand on their own.
    const gguf::Tensor src = *t;
    const int64_t h = e.rope_heads;
    auto read = [src, h] {
      const auto v = gguf::dequantize(src);
      return h > 0 ? unpermute_rope_rows(v, h) : v;
    };
    ck.tensors.emplace(e.bitqat + ".weight", models::LazyTensor{shape, read, [src] { src.release(); }});
    used.insert(gname);
  }
  for (const auto& t : ck.file.tensors) {
    if (!used.count(t.name)) {
      throw core::UserError(
          fmt::format("{}: tensor '{}' is not part of a llama model (bitqat imports bias-free Llama blocks: "
                      "attn_norm, attn_q/k/v/output, ffn_norm, ffn_gate/up/down)",
                      path, t.name));
    }
  }
  return ck;
}

}  // namespace bitqat::interop
