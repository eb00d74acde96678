#include "core/config.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>

namespace bitqat::core {
namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(path);
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

void set_path(YAML::Node node, const std::vector<std::string>& parts, size_t i, const YAML::Node& value,
              const std::string& flag) {
  const std::string& key = parts[i];
  if (i + 1 == parts.size()) {
    node[key] = value;
    return;
  }
  YAML::Node next = node[key];
  if (!next.IsDefined() || next.IsNull()) {
    node[key] = YAML::Node(YAML::NodeType::Map);
  } else if (!next.IsMap()) {
    throw ConfigError(
        fmt::format("{}: '{}' is a value, not a section; expected a key path of "
                    "sections such as train.steps=100",
                    flag, key));
  }
  set_path(node[key], parts, i + 1, value, flag);
}

// Every mapping key at any depth must be a scalar and appear once: yaml-cpp keeps a repeated key's
// first value and silently ignores the second, and a mapping used as a key cannot name a setting.
void check_keys(const YAML::Node& node, const std::string& path, const std::string& file) {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) check_keys(node[i], fmt::format("{}[{}]", path, i), file);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, int> seen;  // key -> 1-based line
  for (const auto& kv : node) {
    const int line = kv.first.Mark().line + 1;
    if (!kv.first.IsScalar()) {
      throw ConfigError(fmt::format("{}:{}: {}: a {} is used as a key; expected a plain key name", file, line,
                                    path.empty() ? "(top level)" : path,
                                    kv.first.IsMap() ? "mapping" : (kv.first.IsSequence() ? "sequence" : "null")));
    }
    const std::string key = kv.first.Scalar();
    const std::string kp = path.empty() ? key : path + "." + key;
    const auto [it, fresh] = seen.emplace(key, line);
    if (!fresh) {
      throw ConfigError(
          fmt::format("{}:{}: {} is given twice (first at line {}, again at line {}); expected each key once", file,
                      line, kp, it->second, line));
    }
    check_keys(kv.second, kp, file);
  }
}

Node apply_overrides(YAML::Node root, const std::string& name, const std::vector<std::string>& overrides) {
  auto source = std::make_shared<ConfigSource>();
  source->file = name;
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) {
    throw ConfigError(fmt::format("{}: the top level must be a mapping of sections (run:, train:, ...)", name));
  }
  for (const auto& text : overrides) {
    const std::string flag = "--set " + text;
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ConfigError(fmt::format("{}: expected key.path=value, for example --set train.steps=100", flag));
    }
    const std::string path = text.substr(0, eq);
    const std::string raw = text.substr(eq + 1);
    YAML::Node value;
    try {
      value = YAML::Load(raw);
    } catch (const YAML::Exception& e) {
      throw ConfigError(fmt::format("{}: value '{}' is not valid YAML: {}", flag, raw, e.msg));
    }
    check_keys(value, path, flag);
    const auto parts = split_path(path);
    for (const auto& p : parts) {
      if (p.empty()) throw ConfigError(fmt::format("{}: empty component in key path '{}'", flag, path));
    }
    set_path(root, parts, 0, value, flag);
    source->overrides[path] = text;
  }
  return Node(root, source, "");
}

}  // namespace

Node::Node() : Node(YAML::Node(YAML::NodeType::Undefined), std::make_shared<ConfigSource>(), "") {}

Node::Node(YAML::Node node, std::shared_ptr<const ConfigSource> source, std::string path)
    : node_(std::move(node)), source_(std::move(source)), path_(std::move(path)) {}

Node Node::load_file(const std::string& file, const std::vector<std::string>& overrides) {
  std::ifstream in(file);
  if (!in) {
    throw ConfigError(
        fmt::format("{}: cannot open config file (does it exist? paths are relative "
                    "to the current directory)",
                    file));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return load_string(buf.str(), file, overrides);
}

Node Node::load_string(const std::string& text, const std::string& name, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(fmt::format("{}:{}: YAML syntax error: {}", name, e.mark.line + 1, e.msg));
  }
  check_keys(root, "", name);
  return apply_overrides(root, name, overrides);
}

Node& Node::operator=(const Node& other) {
  node_.reset(other.node_);
  source_ = other.source_;
  path_ = other.path_;
  return *this;
}

std::string Node::key_path(const std::string& key) const {
  if (key.empty()) return path_;
  return path_.empty() ? key : path_ + "." + key;
}

bool Node::has(const std::string& key) const {
  if (!node_.IsDefined() || !node_.IsMap()) return false;
  const YAML::Node& self = node_;
  const YAML::Node c = self[key];
  return c.IsDefined() && !c.IsNull();
}

Node Node::child(const std::string& key) const {
  if (!node_.IsDefined() || !node_.IsMap()) return Node(YAML::Node(YAML::NodeType::Undefined), source_, key_path(key));
  const YAML::Node& self = node_;
  const YAML::Node c = self[key];
  if (!c.IsDefined()) return Node(YAML::Node(YAML::NodeType::Undefined), source_, key_path(key));
  return Node(c, source_, key_path(key));
}

std::vector<std::string> Node::keys() const {
  std::vector<std::string> out;
  if (!node_.IsDefined() || !node_.IsMap()) return out;
  for (const auto& kv : node_) out.push_back(kv.first.as<std::string>());
  return out;
}

std::string Node::where(const std::string& key) const {
  const std::string kp = key_path(key);
  // An override of this key or of a section holding it wins.
  for (const auto& [path, text] : source_->overrides) {
    if (kp == path || kp.rfind(path + ".", 0) == 0) return "--set " + text + ": " + kp;
  }
  int line = -1;
  if (!key.empty() && has(key)) {
    const YAML::Node& self = node_;
    line = self[key].Mark().line;
  } else if (node_.IsDefined()) {
    line = node_.Mark().line;
  }
  const std::string suffix = kp.empty() ? "" : ": " + kp;
  if (line >= 0) return fmt::format("{}:{}{}", source_->file, line + 1, suffix);
  return source_->file + suffix;
}

std::string Node::scalar_text(const std::string& key) const {
  if (!has(key)) return "(missing)";
  const YAML::Node& self = node_;
  const YAML::Node c = self[key];
  if (c.IsScalar()) return c.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << c;
  return e.c_str();
}

std::string Node::describe(const std::string& key) const {
  return fmt::format("{} = {}", where(key), scalar_text(key));
}

void Node::fail(const std::string& key, const std::string& expected) const {
  throw ConfigError(fmt::format("{}: expected {}", describe(key), expected));
}

void Node::allow_only(const std::set<std::string>& allowed) const {
  if (!node_.IsDefined() || node_.IsNull()) return;
  if (!node_.IsMap()) {
    throw ConfigError(fmt::format("{}: expected a mapping of keys", where()));
  }
  for (const auto& kv : node_) {
    const auto k = kv.first.as<std::string>();
    if (!allowed.count(k)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw ConfigError(fmt::format("{}: unknown key '{}'; expected one of: {}", where(k), k, list));
    }
  }
}

namespace {
template <class T>
const char* type_name();
template <>
const char* type_name<int>() {
  return "an integer";
}
template <>
const char* type_name<int64_t>() {
  return "an integer";
}
template <>
const char* type_name<double>() {
  return "a number";
}
template <>
const char* type_name<float>() {
  return "a number";
}
template <>
const char* type_name<bool>() {
  return "true or false";
}
template <>
const char* type_name<std::string>() {
  return "a string";
}

template <class T>
bool parse_scalar(const YAML::Node& n, T* out) {
  if (!n.IsScalar()) return false;
  if constexpr (std::is_same_v<T, std::string>) {
    *out = n.Scalar();
    return true;
  } else if constexpr (std::is_same_v<T, bool>) {
    const auto& s = n.Scalar();
    if (s == "true" || s == "True" || s == "yes") {
      *out = true;
      return true;
    }
    if (s == "false" || s == "False" || s == "no") {
      *out = false;
      return true;
    }
    return false;
  } else if constexpr (std::is_integral_v<T>) {
    const auto& s = n.Scalar();
    try {
      size_t pos = 0;
      const long long v = std::stoll(s, &pos, 10);
      if (pos != s.size()) {
        // Accept integral floats written as 1e3 or 1000.0, but nothing fractional.
        size_t dpos = 0;
        const double d = std::stod(s, &dpos);
        if (dpos != s.size() || std::floor(d) != d) return false;
        // Compare in double before converting: casting a value outside T's range is undefined.
        if (!(d >= static_cast<double>(std::numeric_limits<T>::min()) &&
              d <= static_cast<double>(std::numeric_limits<T>::max()) && std::fabs(d) <= 9.0e18)) {
          return false;
        }
        *out = static_cast<T>(d);
        return true;
      }
      if (v < static_cast<long long>(std::numeric_limits<T>::min()) ||
          v > static_cast<long long>(std::numeric_limits<T>::max()))
        return false;
      *out = static_cast<T>(v);
      return true;
    } catch (...) {
      return false;
    }
  } else {
    const auto& s = n.Scalar();
    try {
      size_t pos = 0;
      const double d = std::stod(s, &pos);
      if (pos != s.size() || !std::isfinite(d)) return false;
      *out = static_cast<T>(d);
      return true;
    } catch (...) {
      return false;
    }
  }
}
}  // namespace

template <class T>
T Node::get(const std::string& key, const T& fallback) const {
  if (!has(key)) return fallback;
  const YAML::Node& self = node_;
  T v{};
  if (!parse_scalar<T>(self[key], &v)) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      // A whole number beyond the type's range (1e10 for an int) is refused with the range.
      double d = 0;
      if (parse_scalar<double>(self[key], &d) && std::floor(d) == d) {
        fail(key, fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
      }
    }
    fail(key, type_name<T>());
  }
  return v;
}

template <class T>
T Node::require(const std::string& key) const {
  if (!has(key)) {
    throw ConfigError(fmt::format("{}: required key '{}' is missing ({})", where(), key_path(key), type_name<T>()));
  }
  return get<T>(key, T{});
}

template <class T>
T Node::get_in(const std::string& key, const T& fallback, const T& lo, const T& hi) const {
  const T v = get<T>(key, fallback);
  if (v < lo || v > hi) fail(key, fmt::format("a value in [{}, {}]", lo, hi));
  return v;
}

std::string Node::get_choice(const std::string& key, const std::string& fallback,
                             const std::set<std::string>& choices) const {
  const auto v = get<std::string>(key, fallback);
  if (!choices.count(v)) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
    fail(key, "one of " + list);
  }
  return v;
}

std::vector<double> Node::get_doubles(const std::string& key) const {
  std::vector<double> out;
  if (!has(key)) return out;
  const YAML::Node& self = node_;
  const YAML::Node seq = self[key];
  if (!seq.IsSequence()) fail(key, "a list of numbers");
  for (const auto& item : seq) {
    double d = 0;
    if (!parse_scalar<double>(item, &d)) fail(key, "a list of numbers");
    out.push_back(d);
  }
  return out;
}

std::vector<std::string> Node::get_strings(const std::string& key, std::vector<std::string> fallback) const {
  if (!has(key)) return fallback;
  const YAML::Node& self = node_;
  const YAML::Node seq = self[key];
  std::vector<std::string> out;
  if (seq.IsScalar()) return {seq.Scalar()};
  if (!seq.IsSequence()) fail(key, "a list of strings");
  for (const auto& item : seq) {
    if (!item.IsScalar()) fail(key, "a list of strings");
    out.push_back(item.Scalar());
  }
  return out;
}

#define BITQAT_INSTANTIATE(T)                                  \
  template T Node::get<T>(const std::string&, const T&) const; \
  template T Node::require<T>(const std::string&) const;       \
  template T Node::get_in<T>(const std::string&, const T&, const T&, const T&) const;
BITQAT_INSTANTIATE(int)
BITQAT_INSTANTIATE(int64_t)
BITQAT_INSTANTIATE(double)
BITQAT_INSTANTIATE(float)
#undef BITQAT_INSTANTIATE
template bool Node::get<bool>(const std::string&, const bool&) const;
template bool Node::require<bool>(const std::string&) const;
template std::string Node::get<std::string>(const std::string&, const std::string&) const;
template std::string Node::require<std::string>(const std::string&) const;

std::string to_yaml_string(const YAML::Node& node) {
  YAML::Emitter e;
  e << node;
  return std::string(e.c_str()) + "\n";
}

}  // namespace bitqat::core
