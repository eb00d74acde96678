// YAML config access that remembers where every value came from (file:line or a --set flag), so
// that a bad value is reported as `configs/x.yaml:12: train.steps = -3: expected an integer >= 1`.
#pragma once
#include <yaml-cpp/yaml.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace bitqat::core {

// Shared by every Node cut from one document: the file name and the key paths set by --set.
struct ConfigSource {
  std::string file;
  std::map<std::string, std::string> overrides;  // key path -> the raw "--set" text
};

// A YAML mapping (or scalar) plus its key path. Cheap to copy.
class Node {
 public:
  Node();  // an undefined node from nowhere (a config section that was not given)
  Node(YAML::Node node, std::shared_ptr<const ConfigSource> source, std::string path = "");
  Node(const Node&) = default;
  // YAML::Node's own operator= writes through to the node it refers to (and throws for a missing
  // key); a config handle must rebind instead.
  Node& operator=(const Node& other);

  // Parse a file (with clear errors for a missing file or bad YAML) and apply `--set k.p=v`
  // overrides; each override is parsed as YAML and must name an existing or new key path.
  static Node load_file(const std::string& file, const std::vector<std::string>& overrides = {});
  static Node load_string(const std::string& text, const std::string& name,
                          const std::vector<std::string>& overrides = {});

  const std::string& path() const { return path_; }
  std::string key_path(const std::string& key) const;  // path() + "." + key
  const YAML::Node& yaml() const { return node_; }
  bool defined() const { return node_.IsDefined() && !node_.IsNull(); }
  bool has(const std::string& key) const;
  Node child(const std::string& key) const;  // an undefined Node when absent
  std::vector<std::string> keys() const;

  // Scalars: get() returns the fallback when the key is absent; require() fails. Both fail with
  // the location, the value and the expected type on a wrong type.
  template <class T>
  T get(const std::string& key, const T& fallback) const;
  template <class T>
  T require(const std::string& key) const;
  std::vector<double> get_doubles(const std::string& key) const;  // a sequence of numbers
  std::vector<std::string> get_strings(const std::string& key, std::vector<std::string> fallback = {}) const;

  // Unknown keys are errors: every key in this mapping must be in `allowed`.
  void allow_only(const std::set<std::string>& allowed) const;

  // "file:line: key.path" (or "--set key.path=v" for an override) for `key` under this node.
  std::string where(const std::string& key = "") const;
  // "where = value" text of a key, for error messages.
  std::string describe(const std::string& key) const;
  // Throws ConfigError "where(key) = value: expected".
  [[noreturn]] void fail(const std::string& key, const std::string& expected) const;

  // Range checks that throw through fail(); return the value for chaining.
  template <class T>
  T get_in(const std::string& key, const T& fallback, const T& lo, const T& hi) const;
  std::string get_choice(const std::string& key, const std::string& fallback,
                         const std::set<std::string>& choices) const;

 private:
  std::string scalar_text(const std::string& key) const;
  YAML::Node node_;
  std::shared_ptr<const ConfigSource> source_;
  std::string path_;
};

// The YAML text of a node (block style, ending in a newline), as config.resolved.yaml holds it; the
// file itself is written atomically by the trainer (core/fs.hpp).
std::string to_yaml_string(const YAML::Node& node);

}  // namespace bitqat::core
