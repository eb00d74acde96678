#include "interop/gguf_tokenizer.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/gguf_llama.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;
namespace gguf = checkpoints::gguf;
using gguf::Value;
using gguf::ValueType;

namespace {

// llama.cpp's llama_token_type (llama-vocab.h).
constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(core::read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw core::UserError(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

// The id of a special token named in tokenizer_config.json (a string or {"content": ...}).
std::optional<int64_t> token_id(const nlohmann::json& spec, const std::vector<std::string>& tokens) {
  const auto name = spec.is_object()   ? spec.value("content", std::string())
                    : spec.is_string() ? spec.get<std::string>()
                                       : "";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!name.empty() && tokens[i] == name) return static_cast<int64_t>(i);
  }
  return std::nullopt;
}

// GPT-2's byte-level pre-tokenizer as `tokenizers` writes it.
bool is_gpt2_byte_level(const nlohmann::json& pre) {
  return pre.is_object() && pre.value("type", std::string()) == "ByteLevel" && pre.value("use_regex", true) &&
         !pre.value("add_prefix_space", false);
}

// SmolLM2's: each digit on its own, then GPT-2's byte level.
bool is_smollm(const nlohmann::json& pre) {
  if (!pre.is_object() || pre.value("type", std::string()) != "Sequence") return false;
  const auto& seq = pre.value("pretokenizers", nlohmann::json::array());
  return seq.size() == 2 && seq[0].is_object() && seq[0].value("type", std::string()) == "Digits" &&
         seq[0].value("individual_digits", false) && is_gpt2_byte_level(seq[1]);
}

// The llama.cpp pre type of a byte-level BPE tokenizer.json; refuses other tokenizers.
std::string byte_level_bpe_pre(const nlohmann::json& tj, const std::string& path) {
  const auto& model = tj.value("model", nlohmann::json::object());
  const auto type = model.value("type", std::string("?"));
  auto refuse = [&](const std::string& what) {
    throw core::UserError(fmt::format(
        "{}: {}; bitqat reads Hugging Face tokenizers that are BPE with GPT-2's byte-level pre-tokenizer, alone "
        "or after Digits(individual_digits) as SmolLM2's (what llama.cpp runs as pre-tokenizers \"gpt-2\" and "
        "\"smollm\"); use a byte-level model or a GGUF source instead",
        path, what));
  };
  if (type != "BPE") refuse(fmt::format("model.type is {}", type));
  if (!tj.value("normalizer", nlohmann::json()).is_null()) refuse("it has a normalizer");
  const auto& pre = tj.value("pre_tokenizer", nlohmann::json());
  if (is_gpt2_byte_level(pre)) return "gpt-2";
  if (is_smollm(pre)) return "smollm";
  refuse(
      fmt::format("its pre_tokenizer is {} (expected ByteLevel with use_regex true, add_prefix_space false, "
                  "alone or after Digits with individual_digits true)",
                  pre.dump()));
  return "";
}

GgufMetadata hf_tokenizer(const fs::path& dir, int64_t vocab_size) {
  const auto path = (dir / "tokenizer.json").string();
  const auto tj = read_json(path);
  const auto pre = byte_level_bpe_pre(tj, path);
  const auto& model = tj["model"];
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), kUnused);
  auto put = [&](int64_t id, const std::string& text, int32_t type) {
    if (id < 0 || id >= vocab_size) {
      throw core::UserError(fmt::format("{}: token {} has id {}: expected ids below model.vocab_size = {}", path,
                                        nlohmann::json(text).dump(), id, vocab_size));
    }
    tokens[static_cast<size_t>(id)] = text;
    types[static_cast<size_t>(id)] = type;
  };
  const auto vocab = model.value("vocab", nlohmann::json::object());  // items() must not outlive it
  for (const auto& [text, id] : vocab.items()) put(id.get<int64_t>(), text, kNormal);
  for (const auto& t : tj.value("added_tokens", nlohmann::json::array())) {
    put(t.at("id").get<int64_t>(), t.at("content").get<std::string>(),
        t.value("special", false) ? kControl : kUserDefined);
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (types[i] == kUnused) tokens[i] = fmt::format("[PAD{}]", i);
  }
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : model.value("merges", nlohmann::json::array())) {
    merges.push_back(m.is_array() ? m[0].get<std::string>() + " " + m[1].get<std::string>() : m.get<std::string>());
  }
  GgufMetadata out = {
      {"tokenizer.ggml.model", Value::str("gpt2")},
      {"tokenizer.ggml.pre", Value::str(pre)},
      {"tokenizer.ggml.tokens", Value::array(ValueType::kString, tokens)},
      {"tokenizer.ggml.token_type", Value::array(ValueType::kInt32, types)},
      {"tokenizer.ggml.merges", Value::array(ValueType::kString, merges)},
  };
  // Special tokens: config.json's ids first, then tokenizer_config.json's names.
  const auto cfg =
      fs::exists(dir / "config.json") ? read_json((dir / "config.json").string()) : nlohmann::json::object();
  const auto tcfg = fs::exists(dir / "tokenizer_config.json") ? read_json((dir / "tokenizer_config.json").string())
                                                              : nlohmann::json::object();
  for (const char* which : {"bos", "eos"}) {
    std::optional<int64_t> id;
    const auto key = std::string(which) + "_token_id";
    if (cfg.contains(key) && cfg[key].is_number_integer()) id = cfg[key].get<int64_t>();
    if (!id && tcfg.contains(std::string(which) + "_token")) id = token_id(tcfg[std::string(which) + "_token"], tokens);
    if (id && *id >= 0 && *id < vocab_size) {
      out.emplace_back(fmt::format("tokenizer.ggml.{}_token_id", which), Value::u32(static_cast<uint32_t>(*id)));
    }
  }
  out.emplace_back("tokenizer.ggml.add_bos_token", Value::boolean(tcfg.value("add_bos_token", false)));
  out.emplace_back("tokenizer.ggml.add_eos_token", Value::boolean(tcfg.value("add_eos_token", false)));
  return out;
}

GgufMetadata gguf_tokenizer(const std::string& path, int64_t vocab_size) {
  GgufMetadata out;
  for (auto& [k, v] : gguf::load_metadata(path)) {
    if (k.rfind("tokenizer.", 0) == 0) out.emplace_back(k, v);
  }
  for (const auto& [k, v] : out) {
    if (k == "tokenizer.ggml.tokens" && static_cast<int64_t>(v.data.size()) != vocab_size) {
      throw core::UserError(fmt::format("{}: its tokenizer has {} tokens; the model's vocabulary is {}", path,
                                        v.data.size(), vocab_size));
    }
  }
  return out;
}

}  // namespace

GgufMetadata byte_tokenizer() {
  return {
      {"tokenizer.ggml.model", Value::str("gpt2")},
      {"tokenizer.ggml.pre", Value::str("default")},
      {"tokenizer.ggml.tokens", Value::array(ValueType::kString, data::gpt2_byte_tokens())},
      {"tokenizer.ggml.token_type", Value::array(ValueType::kInt32, std::vector<int32_t>(256, kNormal))},
      {"tokenizer.ggml.merges", Value::array(ValueType::kString, nlohmann::json::array())},
      {"tokenizer.ggml.bos_token_id", Value::u32(0)},
      {"tokenizer.ggml.eos_token_id", Value::u32(0)},
      {"tokenizer.ggml.add_bos_token", Value::boolean(false)},
      {"tokenizer.ggml.add_eos_token", Value::boolean(false)},
  };
}

namespace {

// source_tokenizer, and in *where the file the tokenizer came from.
std::optional<GgufMetadata> find_tokenizer(const std::string& source, int64_t vocab_size, std::string* where) {
  std::string path = source;
  // A bitqat run started from another run: follow init_from (a chain of fine-tunes), a few levels.
  for (int depth = 0; depth < 16 && !path.empty(); ++depth) {
    if (is_gguf_file(path)) {
      *where = path;
      return gguf_tokenizer(path, vocab_size);
    }
    if (fs::is_directory(path) && fs::exists(fs::path(path) / "tokenizer.json")) {
      *where = (fs::path(path) / "tokenizer.json").string();
      return hf_tokenizer(path, vocab_size);
    }
    const auto resolved = fs::path(path) / "config.resolved.yaml";
    if (!fs::is_directory(path) || !fs::exists(resolved)) return std::nullopt;
    try {
      const auto y = YAML::LoadFile(resolved.string());
      path = y["init_from"] ? y["init_from"].as<std::string>() : "";
    } catch (const YAML::Exception& e) {
      throw core::UserError(fmt::format("{}: {}", resolved.string(), e.what()));
    }
  }
  return std::nullopt;
}

const nlohmann::json* find_key(const GgufMetadata& m, const std::string& key) {
  for (const auto& [k, v] : m) {
    if (k == key) return &v.data;
  }
  return nullptr;
}

}  // namespace

std::optional<GgufMetadata> source_tokenizer(const std::string& source, int64_t vocab_size) {
  std::string where;
  return find_tokenizer(source, vocab_size, &where);
}

data::BpeTokenizer bpe_tokenizer(const GgufMetadata& metadata, const std::string& origin) {
  auto fail = [&](const std::string& what) { throw core::UserError(fmt::format("{}: {}", origin, what)); };
  auto get = [&](const std::string& key, bool required) -> const nlohmann::json* {
    const auto* v = find_key(metadata, key);
    if (!v && required) fail(fmt::format("{} is missing: expected the key of a byte-level BPE tokenizer", key));
    return v;
  };
  auto strings = [&](const std::string& key) {
    const auto* v = get(key, true);
    if (!v->is_array()) fail(fmt::format("{}: expected an array of strings", key));
    std::vector<std::string> out;
    out.reserve(v->size());
    for (const auto& e : *v) {
      if (!e.is_string()) fail(fmt::format("{}: expected an array of strings, found {}", key, e.dump()));
      out.push_back(e.get<std::string>());
    }
    return out;
  };
  const auto* model = get("tokenizer.ggml.model", true);
  if (!model->is_string() || model->get<std::string>() != "gpt2") {
    fail(fmt::format("tokenizer.ggml.model = {}: bitqat's tokenizer runs gpt2 (byte-level BPE) vocabularies only",
                     model->is_string() ? model->get<std::string>() : model->dump()));
  }
  data::BpeVocab v;
  const auto* pre = get("tokenizer.ggml.pre", true);
  v.pre = pre->is_string() ? pre->get<std::string>() : pre->dump();
  v.tokens = strings("tokenizer.ggml.tokens");
  v.merges =
      find_key(metadata, "tokenizer.ggml.merges") ? strings("tokenizer.ggml.merges") : std::vector<std::string>{};
  if (const auto* types = get("tokenizer.ggml.token_type", false)) {
    if (!types->is_array()) fail("tokenizer.ggml.token_type: expected an array of integers");
    for (const auto& t : *types) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > 6) {
        fail(fmt::format("tokenizer.ggml.token_type holds {}: expected llama.cpp's token types 0..6", t.dump()));
      }
      v.types.push_back(static_cast<data::TokenType>(t.get<int32_t>()));
    }
  }
  for (const char* which : {"bos", "eos"}) {
    const auto* id = get(fmt::format("tokenizer.ggml.{}_token_id", which), false);
    if (!id) continue;
    if (!id->is_number_integer())
      fail(fmt::format("tokenizer.ggml.{}_token_id = {}: expected an id", which, id->dump()));
    (std::string(which) == "bos" ? v.bos : v.eos) = id->get<int64_t>();
  }
  if (const auto* add = get("tokenizer.ggml.add_bos_token", false)) v.add_bos = add->is_boolean() && add->get<bool>();
  if (v.add_bos && !v.bos) fail("tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
  return data::BpeTokenizer(std::move(v), origin);
}

std::optional<data::BpeTokenizer> source_bpe_tokenizer(const std::string& source, int64_t vocab_size) {
  std::string where;
  const auto m = find_tokenizer(source, vocab_size, &where);
  if (!m) return std::nullopt;
  return bpe_tokenizer(*m, where);
}

}  // namespace bitqat::interop
