#include "interop/hf_llama.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>
#include <set>

#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/llama_tensor_names.hpp"

namespace bitqat::interop {

using models::BitLM;
using models::LMConfig;
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& origin, const std::string& key, const nlohmann::json& value,
                       const std::string& expected) {
  throw core::UserError(fmt::format("{}: {} = {}: {}", origin, key, value.dump(), expected));
}

int64_t get_int(const nlohmann::json& j, const std::string& origin, const std::string& key,
                std::optional<int64_t> fallback, int64_t lo, int64_t hi) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    throw core::UserError(fmt::format("{}: {} is missing (a Llama config.json needs it)", origin, key));
  }
  const auto& v = j[key];
  if (!v.is_number_integer()) fail(origin, key, v, "expected an integer");
  const auto x = v.get<int64_t>();
  if (x < lo || x > hi) fail(origin, key, v, fmt::format("expected an integer in [{}, {}]", lo, hi));
  return x;
}

double get_double(const nlohmann::json& j, const std::string& origin, const std::string& key, double fallback,
                  double lo, double hi) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  if (!v.is_number()) fail(origin, key, v, "expected a number");
  const auto x = v.get<double>();
  if (!(x >= lo && x <= hi)) fail(origin, key, v, fmt::format("expected a number in [{}, {}]", lo, hi));
  return x;
}

bool get_bool(const nlohmann::json& j, const std::string& origin, const std::string& key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) fail(origin, key, j[key], "expected true or false");
  return j[key].get<bool>();
}

std::string get_string(const nlohmann::json& j, const std::string& origin, const std::string& key,
                       const std::string& fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_string()) fail(origin, key, j[key], "expected a string");
  return j[key].get<std::string>();
}

}  // namespace

LMConfig lm_config_from_hf(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) throw core::UserError(fmt::format("{}: expected a JSON object", origin));
  const auto model_type = get_string(j, origin, "model_type", "");
  if (model_type != "llama") {
    fail(origin, "model_type", j.value("model_type", nlohmann::json()),
         "expected \"llama\" (bitqat imports Llama-architecture checkpoints)");
  }
  LMConfig c;
  c.dim = get_int(j, origin, "hidden_size", std::nullopt, 2, 1 << 16);
  c.n_layers = get_int(j, origin, "num_hidden_layers", std::nullopt, 1, 1024);
  c.n_heads = get_int(j, origin, "num_attention_heads", std::nullopt, 1, 1024);
  c.n_kv_heads = get_int(j, origin, "num_key_value_heads", c.n_heads, 1, 1024);
  c.ffn_dim = get_int(j, origin, "intermediate_size", std::nullopt, 1, 1 << 20);
  c.vocab_size = get_int(j, origin, "vocab_size", std::nullopt, 2, int64_t{1} << 24);
  c.norm_eps = get_double(j, origin, "rms_norm_eps", 1e-6, 1e-12, 1e-1);
  c.max_seq_len = get_int(j, origin, "max_position_embeddings", 2048, 1, 1 << 24);
  c.tie_embeddings = get_bool(j, origin, "tie_word_embeddings", false);  // LlamaConfig's default
  c.ffn = models::Ffn::kSwiglu;
  c.sub_norm = false;

  // rope_theta sits at the top level, or (newer transformers) inside rope_parameters.
  c.rope_theta = get_double(j, origin, "rope_theta", 10000.0, 1.0, 1e9);
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const auto& rp = j["rope_parameters"];
    if (!rp.is_object()) fail(origin, "rope_parameters", rp, "expected an object");
    const auto type = get_string(rp, origin + ": rope_parameters", "rope_type", "default");
    if (type != "default") {
      fail(origin, "rope_parameters.rope_type", rp["rope_type"], "expected \"default\" (no RoPE scaling)");
    }
    c.rope_theta = get_double(rp, origin + ": rope_parameters", "rope_theta", c.rope_theta, 1.0, 1e9);
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    fail(origin, "rope_scaling", j["rope_scaling"], "expected null (RoPE scaling is not supported)");
  }
  const auto act = get_string(j, origin, "hidden_act", "silu");
  if (act != "silu") fail(origin, "hidden_act", j["hidden_act"], "expected \"silu\" (imported as ffn: swiglu)");
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (get_bool(j, origin, key, false)) fail(origin, key, j[key], "expected false (BitLM has no biases)");
  }
  if (c.dim % c.n_heads != 0) {
    fail(origin, "num_attention_heads", j["num_attention_heads"],
         fmt::format("expected a divisor of hidden_size = {}", c.dim));
  }
  if (j.contains("head_dim") && !j["head_dim"].is_null() &&
      get_int(j, origin, "head_dim", std::nullopt, 1, 1 << 16) != c.head_dim()) {
    fail(origin, "head_dim", j["head_dim"],
         fmt::format("expected hidden_size / num_attention_heads = {}", c.head_dim()));
  }
  if (c.head_dim() % 2 != 0) {
    fail(origin, "num_attention_heads", j["num_attention_heads"],
         fmt::format("expected a head size hidden_size / num_attention_heads that is even, got {}", c.head_dim()));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    fail(origin, "num_key_value_heads", j["num_key_value_heads"],
         fmt::format("expected a divisor of num_attention_heads = {}", c.n_heads));
  }
  return c;
}

std::string lm_config_yaml(const LMConfig& c) {
  return fmt::format(
      "{{kind: lm, vocab_size: {}, dim: {}, n_layers: {}, n_heads: {}, n_kv_heads: {}, ffn: {}, ffn_dim: {}, "
      "sub_norm: {}, max_seq_len: {}, rope_theta: {}, norm_eps: {}, tie_embeddings: {}}}",
      c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, models::to_string(c.ffn), c.ffn_dim, c.sub_norm,
      c.max_seq_len, c.rope_theta, c.norm_eps, c.tie_embeddings);
}

models::LazyTensors bitqat_tensors_from_hf(const std::map<std::string, at::Tensor>& hf, const LMConfig& c,
                                           const std::string& origin,
                                           const std::function<void(const at::Tensor&)>& release) {
  models::LazyTensors out;
  std::set<std::string> used;
  for (const auto& e : llama_tensors(c)) {
    const auto hf_name = e.hf + ".weight";
    const auto& shape = e.shape;
    const auto it = hf.find(hf_name);
    if (it == hf.end()) {
      throw core::UserError(
          fmt::format("{}: tensor '{}' is missing (a Llama model with this config.json needs it)", origin, hf_name));
    }
    if (it->second.sizes() != at::IntArrayRef(shape)) {
      throw core::UserError(fmt::format("{}: tensor '{}' has shape [{}], config.json implies [{}]", origin, hf_name,
                                        fmt::join(it->second.sizes(), ", "), fmt::join(shape, ", ")));
    }
    if (!at::isFloatingType(it->second.scalar_type())) {
      throw core::UserError(fmt::format("{}: tensor '{}' has dtype {}, expected a floating-point type", origin, hf_name,
                                        c10::toString(it->second.scalar_type())));
    }
    const at::Tensor src = it->second;
    models::LazyTensor l{shape, [src] { return src.to(at::kFloat).contiguous(); }, {}};
    if (release) l.release = [release, src] { release(src); };
    out.emplace(e.bitqat + ".weight", std::move(l));
    used.insert(hf_name);
  }
  for (const auto& [hf_name, t] : hf) {
    if (used.count(hf_name)) continue;
    const std::string inv_freq = ".rotary_emb.inv_freq";
    if (hf_name.size() > inv_freq.size() &&
        hf_name.compare(hf_name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0) {
      continue;
    }
    const auto head = llama_tensor_name(LlamaTensor::kOutput).hf + std::string(".weight");
    if (hf_name == head && c.tie_embeddings) {
      // Some tied checkpoints store the head anyway; it must be the embedding, or the import would
      // silently compute another function.
      const auto emb_name = llama_tensor_name(LlamaTensor::kTokenEmbd).hf + std::string(".weight");
      const auto& emb = hf.at(emb_name);
      if (t.sizes() != emb.sizes() || !t.to(at::kFloat).equal(emb.to(at::kFloat))) {
        throw core::UserError(
            fmt::format("{}: tensor '{}' differs from '{}' although config.json says tie_word_embeddings: true", origin,
                        head, emb_name));
      }
      continue;
    }
    throw core::UserError(
        fmt::format("{}: tensor '{}' is not part of a Llama model with this config.json (unsupported architecture?)",
                    origin, hf_name));
  }
  return out;
}

bool is_hf_model_dir(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "config.json"); }

HFCheckpoint load_hf_llama(const std::string& dir) {
  const auto cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::is_regular_file(cfg_path)) {
    throw core::UserError(fmt::format("{}: not a Hugging Face model directory ({} is missing)", dir, cfg_path));
  }
  const auto cfg_json = nlohmann::json::parse(core::read_file(cfg_path), nullptr, false);
  if (cfg_json.is_discarded()) throw core::UserError(fmt::format("{}: not valid JSON", cfg_path));
  HFCheckpoint ck;
  ck.config = lm_config_from_hf(cfg_json, cfg_path);

  const auto single = (fs::path(dir) / "model.safetensors").string();
  const auto index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (fs::is_regular_file(single)) {
    ck.files.push_back(single);
  } else if (fs::is_regular_file(index_path)) {
    const auto index = nlohmann::json::parse(core::read_file(index_path), nullptr, false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      throw core::UserError(fmt::format("{}: expected a JSON object with a weight_map object", index_path));
    }
    std::set<std::string> shards;
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        throw core::UserError(
            fmt::format("{}: weight_map.{} = {}: expected a file name", index_path, name, file.dump()));
      }
      // A shard is a file of the model directory itself: no directories, no "..", no absolute path.
      const auto f = file.get<std::string>();
      const fs::path fp(f);
      if (f.empty() || fp.is_absolute() || fp.has_parent_path() || f == "." || f == "..") {
        throw core::UserError(fmt::format(
            "{}: weight_map.{} = {}: expected the name of a file in the model directory (no path), not a path "
            "that leads elsewhere",
            index_path, name, file.dump()));
      }
      shards.insert(f);
    }
    for (const auto& s : shards) {
      const auto p = (fs::path(dir) / s).string();
      if (!fs::is_regular_file(p)) {
        throw core::UserError(fmt::format("{}: shard {} named by the weight_map is missing", index_path, p));
      }
      ck.files.push_back(p);
    }
  } else {
    throw core::UserError(fmt::format("{}: neither model.safetensors nor model.safetensors.index.json is there", dir));
  }

  // Mapped, not read: the tensors view the files until each is copied into a model.
  std::map<std::string, at::Tensor> hf;
  std::vector<std::shared_ptr<const core::MappedFile>> mappings;
  for (const auto& f : ck.files) {
    auto file = checkpoints::load_safetensors(f);
    mappings.push_back(file.mapping);
    for (auto& [name, t] : file.tensors) {
      if (!hf.emplace(name, t).second) {
        throw core::UserError(fmt::format("{}: tensor '{}' appears in more than one shard", f, name));
      }
    }
  }
  auto release = [mappings](const at::Tensor& t) {
    for (const auto& m : mappings) m->release(t.data_ptr(), static_cast<size_t>(t.nbytes()));
  };
  ck.tensors = bitqat_tensors_from_hf(hf, ck.config, ck.files.size() == 1 ? ck.files[0] : dir, release);
  return ck;
}

BitLM import_hf_llama(const std::string& dir, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
                      const std::vector<std::string>& exclude) {
  auto ck = load_hf_llama(dir);
  BitLM lm(ck.config, spec, include, exclude);
  // bitqat_tensors_from_hf produced exactly the model's tensors (sub_norm off, no biases).
  models::load_model_tensors(*lm, ck.tensors, dir);
  spdlog::info("imported {} ({} tensors from {} file(s)): {}", dir, ck.tensors.size(), ck.files.size(),
               lm_config_yaml(ck.config));
  return lm;
}

}  // namespace bitqat::interop
