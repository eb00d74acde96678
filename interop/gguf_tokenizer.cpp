#include "interop/gguf_tokenizer.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;
namespace gguf = checkpoints::gguf;
using gguf::Value;
using gguf::ValueType;

namespace {

// llama.cpp's llama_token_type (llama-vocab.h).
constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

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

void check_byte_level_bpe(const nlohmann::json& tj, const std::string& path) {
  const auto& model = tj.value("model", nlohmann::json::object());
  const auto type = model.value("type", std::string("?"));
  auto refuse = [&](const std::string& what) {
    throw core::UserError(fmt::format(
        "{}: {}; the gguf export writes Hugging Face tokenizers that are BPE with GPT-2's byte-level "
        "pre-tokenizer (what llama.cpp runs as pre-tokenizer \"gpt-2\"); export with a byte-level model or a "
        "GGUF source instead",
        path, what));
  };
  if (type != "BPE") refuse(fmt::format("model.type is {}", type));
  if (!tj.value("normalizer", nlohmann::json()).is_null()) refuse("it has a normalizer");
  const auto& pre = tj.value("pre_tokenizer", nlohmann::json());
  if (!pre.is_object() || pre.value("type", std::string()) != "ByteLevel" || !pre.value("use_regex", true) ||
      pre.value("add_prefix_space", false)) {
    refuse(fmt::format("its pre_tokenizer is {} (expected ByteLevel with use_regex true, add_prefix_space false)",
                       pre.dump()));
  }
}

GgufMetadata hf_tokenizer(const fs::path& dir, int64_t vocab_size) {
  const auto path = (dir / "tokenizer.json").string();
  const auto tj = read_json(path);
  check_byte_level_bpe(tj, path);
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
      {"tokenizer.ggml.pre", Value::str("gpt-2")},
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

bool is_gguf_file(const std::string& path) {
  if (!fs::is_regular_file(path) || fs::file_size(path) < 4) return false;
  return core::read_file_range(path, 0, 4) == "GGUF";
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

GgufMetadata byte_tokenizer() {
  return {
      {"tokenizer.ggml.model", Value::str("gpt2")},
      {"tokenizer.ggml.pre", Value::str("default")},
      {"tokenizer.ggml.tokens", Value::array(ValueType::kString, gpt2_byte_tokens())},
      {"tokenizer.ggml.token_type", Value::array(ValueType::kInt32, std::vector<int32_t>(256, kNormal))},
      {"tokenizer.ggml.merges", Value::array(ValueType::kString, nlohmann::json::array())},
      {"tokenizer.ggml.bos_token_id", Value::u32(0)},
      {"tokenizer.ggml.eos_token_id", Value::u32(0)},
      {"tokenizer.ggml.add_bos_token", Value::boolean(false)},
      {"tokenizer.ggml.add_eos_token", Value::boolean(false)},
  };
}

std::optional<GgufMetadata> source_tokenizer(const std::string& source, int64_t vocab_size) {
  std::string path = source;
  // A bitqat run started from another run: follow init_from (a chain of fine-tunes), a few levels.
  for (int depth = 0; depth < 16 && !path.empty(); ++depth) {
    if (is_gguf_file(path)) return gguf_tokenizer(path, vocab_size);
    if (fs::is_directory(path) && fs::exists(fs::path(path) / "tokenizer.json")) return hf_tokenizer(path, vocab_size);
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

}  // namespace bitqat::interop
