// A config section declared once. Each key is one Field: its name, type, default, range or
// choices, and a one-line meaning. The parse (the unknown-key check, then every key, with errors that
// name file:line, key, value and what was expected), the resolved YAML written into a run directory
// and the config reference all come from that one declaration: torchtitan's dataclass configs, in
// C++. A key's default is the config struct's own member initializer, or a rule over the keys
// declared before it (`computed`).
//
//   const core::Schema<TrainLoopConfig>& schema() {
//     static const core::Schema<TrainLoopConfig> s({
//         core::key("steps", &TrainLoopConfig::steps, "optimizer steps").range(1, kMaxStep),
//         core::key("eval_at_start", &TrainLoopConfig::eval_at_start, "evaluate before step 0"),
//     });
//     return s;
//   }
//   TrainLoopConfig c = schema().parse(root.child("train"));
//
// Value types: bool, int, int64_t, uint64_t, double, std::string, std::vector<std::string>,
// std::vector<int64_t>, std::vector<double>, an enum with a name table (`choices`), core::Node (a sub-tree another
// schema or factory reads, e.g. a schedule), and a type that reads and writes itself (a ConfigValue: a key whose
// value takes more than one YAML shape, such as a name or a mapping). Errors are core::ConfigError.
#pragma once
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "core/enum_name.hpp"
#include "core/error.hpp"

namespace bitqat::core {

// One row of the config reference.
struct KeyReference {
  std::string key;       // the full key path, "train.steps"
  std::string type;      // "integer", "number", "true or false", "string", "list of strings", ...
  std::string fallback;  // the default as YAML text; "(required)" or "(none)"
  std::string allowed;   // "[1, 1048576]", "auto|cpu|cuda" or ""
  std::string meaning;
  std::string when;  // where the key applies only to one kind of its section ("kind: two_stage"); else empty
};

// One key of a section of T. Built with core::key(); a Schema holds them.
template <class T>
struct Field {
  std::string key, type, allowed, meaning;
  std::string expected;  // the type as an error says it: "an integer", "a string"
  std::string fallback;  // the default's description where it is not the member initializer
  bool required = false;
  std::function<void(const Node& section, T* c)> read;  // the key is present
  std::function<void(T* c)> absent;                     // the key is absent (a computed default); may be empty
  std::function<void(const T& c, YAML::Node out)> write;
};

// A value type that reads and writes itself, for a key whose value takes more than one YAML shape
// (train.activation_checkpointing: a name or a mapping). V provides
//   static V parse_key(const Node& section, const std::string& key);  // fails through Node::fail
//   YAML::Node to_yaml() const;                                       // loads back to the same value
//   static constexpr const char* kConfigType;     // the reference's type column ("name or mapping")
//   static constexpr const char* kConfigAllowed;  // its allowed column, and what an error says was expected
template <class V, class = void>
struct is_config_value : std::false_type {};
template <class V>
struct is_config_value<
    V, std::void_t<decltype(V::parse_key(std::declval<const Node&>(), std::declval<const std::string&>())),
                   decltype(std::declval<const V&>().to_yaml())>> : std::true_type {};
template <class V>
inline constexpr bool is_config_value_v = is_config_value<V>::value;

namespace schema_detail {

template <class V>
struct is_vector : std::false_type {};
template <class V>
struct is_vector<std::vector<V>> : std::true_type {};

template <class V>
std::string type_text() {
  if constexpr (is_config_value_v<V>) {
    return V::kConfigType;
  } else if constexpr (std::is_same_v<V, bool>) {
    return "true or false";
  } else if constexpr (std::is_integral_v<V>) {
    return "integer";
  } else if constexpr (std::is_floating_point_v<V>) {
    return "number";
  } else if constexpr (std::is_same_v<V, std::string>) {
    return "string";
  } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
    return "list of strings";
  } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
    return "list of integers";
  } else if constexpr (std::is_same_v<V, std::vector<double>>) {
    return "list of numbers";
  } else if constexpr (std::is_same_v<V, Node>) {
    return "mapping";
  } else {
    return "one of";
  }
}

// The type as an error message says what was expected (core::Node's words).
template <class V>
std::string expected_text() {
  if constexpr (is_config_value_v<V>) {
    return V::kConfigAllowed;
  } else if constexpr (std::is_same_v<V, bool>) {
    return "true or false";
  } else if constexpr (std::is_integral_v<V>) {
    return "an integer";
  } else if constexpr (std::is_floating_point_v<V>) {
    return "a number";
  } else if constexpr (std::is_same_v<V, std::string>) {
    return "a string";
  } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
    return "a list of strings";
  } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
    return "a list of integers";
  } else if constexpr (std::is_same_v<V, std::vector<double>>) {
    return "a list of numbers";
  } else if constexpr (std::is_same_v<V, Node>) {
    return "a mapping";
  } else {
    return "one of the names";
  }
}

// Reads a present key of a type Node::get knows, or a list.
template <class V>
V read_value(const Node& n, const std::string& key, const V& current) {
  if constexpr (std::is_same_v<V, uint64_t>) {
    const int64_t v = n.get<int64_t>(key, 0);
    if (v < 0) n.fail(key, fmt::format("an integer in [0, {}]", std::numeric_limits<int64_t>::max()));
    return static_cast<uint64_t>(v);
  } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
    return n.get_strings(key, current);
  } else if constexpr (std::is_same_v<V, std::vector<double>>) {
    return n.get_doubles(key);
  } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
    std::vector<int64_t> out;
    for (const double d : n.get_doubles(key)) {
      if (d != std::floor(d) || std::fabs(d) > 9.0e18) n.fail(key, "a list of integers");
      out.push_back(static_cast<int64_t>(d));
    }
    return out;
  } else {
    return n.get<V>(key, current);
  }
}

}  // namespace schema_detail

// Builds one Field<T> for the member `V T::*`; converts to Field<T> where a Schema is declared.
template <class T, class V>
class KeyBuilder {
 public:
  KeyBuilder(const char* key, V T::*member, const char* meaning) : member_(member) {
    f_.key = key;
    f_.meaning = meaning;
    f_.type = schema_detail::type_text<V>();
    f_.expected = schema_detail::expected_text<V>();
    if constexpr (is_config_value_v<V>) f_.allowed = V::kConfigAllowed;
  }

  // An inclusive range [lo, hi] (arithmetic values).
  KeyBuilder& range(V lo, V hi) {
    static_assert(std::is_arithmetic_v<V> && !std::is_same_v<V, bool>, "range() is for numbers");
    lo_ = lo;
    hi_ = hi;
    ranged_ = true;
    f_.allowed = fmt::format("[{}, {}]", lo, hi);
    return *this;
  }

  // The names an enum value is written as (V an enum).
  template <size_t N>
  KeyBuilder& choices(const std::array<EnumName<V>, N>& names) {
    static_assert(std::is_enum_v<V>, "choices() is for enums");
    names_.assign(names.begin(), names.end());
    std::set<std::string> sorted;
    for (const auto& n : names) sorted.insert(n.name);
    for (const auto& s : sorted) f_.allowed += (f_.allowed.empty() ? "" : "|") + s;
    f_.type = "one of";
    f_.expected = "one of " + f_.allowed;
    return *this;
  }

  // A condition on the value; `expected` is what the error says was expected, and what the
  // reference lists as allowed when no range or choices say it.
  KeyBuilder& check(std::function<bool(const V&)> ok, std::string expected) {
    if (f_.allowed.empty()) f_.allowed = expected;
    checks_.push_back({std::move(ok), std::move(expected)});
    return *this;
  }

  // The key must be given.
  KeyBuilder& required() {
    f_.required = true;
    return *this;
  }

  // A default computed from the keys declared before this one, described by `text`.
  KeyBuilder& computed(std::function<V(const T&)> fallback, std::string text) {
    computed_ = std::move(fallback);
    f_.fallback = std::move(text);
    return *this;
  }

  // The type's name in the reference, where the generic one says too little ("a schedule").
  KeyBuilder& type(std::string text) {
    f_.type = std::move(text);
    return *this;
  }

  // The default's description, where the member initializer says too little.
  KeyBuilder& fallback(std::string text) {
    f_.fallback = std::move(text);
    return *this;
  }

  operator Field<T>() const {  // NOLINT(google-explicit-constructor): the declaration reads as a list
    Field<T> f = f_;
    const auto member = member_;
    const auto names = names_;
    const auto checks = checks_;
    const bool ranged = ranged_;
    const V lo = lo_, hi = hi_;
    const std::string key = f_.key, allowed = f_.allowed;
    f.read = [=](const Node& n, T* c) {
      V v{};
      if constexpr (std::is_same_v<V, Node>) {
        const Node child = n.child(key);
        v = child.defined() ? child : c->*member;  // key: null keeps the default
      } else if constexpr (is_config_value_v<V>) {
        v = V::parse_key(n, key);
      } else if constexpr (std::is_enum_v<V>) {
        const auto text = n.get<std::string>(key, "");
        bool found = false;
        for (const auto& e : names) {
          if (text == e.name) {
            v = e.value;
            found = true;
          }
        }
        if (!found) n.fail(key, "one of " + allowed);
      } else {
        v = schema_detail::read_value<V>(n, key, c->*member);
      }
      if constexpr (std::is_arithmetic_v<V> && !std::is_same_v<V, bool>) {
        if (ranged && (v < lo || v > hi)) n.fail(key, fmt::format("a value in [{}, {}]", lo, hi));
      }
      for (const auto& [ok, expected] : checks) {
        if (!ok(v)) n.fail(key, expected);
      }
      c->*member = std::move(v);
    };
    if (computed_) {
      const auto fn = computed_;
      f.absent = [member, fn](T* c) { c->*member = fn(*c); };
    }
    f.write = [member, names, key](const T& c, YAML::Node out) {
      if constexpr (std::is_same_v<V, Node>) {
        if ((c.*member).defined()) out[key] = YAML::Clone((c.*member).yaml());
      } else if constexpr (is_config_value_v<V>) {
        out[key] = (c.*member).to_yaml();
      } else if constexpr (std::is_enum_v<V>) {
        for (const auto& e : names) {
          if (e.value == c.*member) out[key] = e.name;
        }
      } else {
        out[key] = c.*member;
      }
    };
    return f;
  }

 private:
  Field<T> f_;
  V T::*member_;
  std::vector<EnumName<V>> names_;
  std::vector<std::pair<std::function<bool(const V&)>, std::string>> checks_;
  std::function<V(const T&)> computed_;
  bool ranged_ = false;
  V lo_{}, hi_{};
};

template <class T, class V>
KeyBuilder<T, V> key(const char* name, V T::*member, const char* meaning) {
  return KeyBuilder<T, V>(name, member, meaning);
}

template <class T>
class Schema {
 public:
  // `check` runs after every key is read: conditions between keys, with the section for locations.
  explicit Schema(std::vector<Field<T>> fields, std::function<void(const Node& section, const T& c)> check = {})
      : fields_(std::move(fields)), check_(std::move(check)) {
    for (const auto& f : fields_) keys_.insert(f.key);
  }

  // Reads `section` over `*c`, whose members hold the defaults: unknown keys first (the declared
  // keys plus `extra_keys` are allowed), then every key in declaration order, then the check. An
  // absent section leaves the defaults (computed ones are computed).
  void parse_into(const Node& section, T* c, const std::set<std::string>& extra_keys = {}) const {
    if (extra_keys.empty()) {
      section.allow_only(keys_);
    } else {
      auto allowed = keys_;
      allowed.insert(extra_keys.begin(), extra_keys.end());
      section.allow_only(allowed);
    }
    for (const auto& f : fields_) {
      if (section.has(f.key)) {
        f.read(section, c);
      } else if (f.required) {
        throw ConfigError(
            fmt::format("{}: required key '{}' is missing ({})", section.where(), section.key_path(f.key), f.expected));
      } else if (f.absent) {
        f.absent(c);
      }
    }
    if (check_) check_(section, *c);
  }

  T parse(const Node& section) const {
    T c{};
    parse_into(section, &c);
    return c;
  }

  // Every key's value into the mapping `out` (the resolved config).
  void write(const T& c, YAML::Node out) const {
    for (const auto& f : fields_) f.write(c, out);
  }

  const std::set<std::string>& keys() const { return keys_; }
  const std::vector<Field<T>>& fields() const { return fields_; }

  // The reference rows, keys prefixed with `prefix` ("train."); defaults from T's initializers.
  std::vector<KeyReference> reference(const std::string& prefix) const {
    std::vector<KeyReference> rows;
    YAML::Node values(YAML::NodeType::Map);
    {
      const auto defaults = std::make_unique<T>();
      write(*defaults, values);
    }
    for (const auto& f : fields_) {
      std::string fallback = f.fallback;
      if (f.required) {
        fallback = "(required)";
      } else if (fallback.empty()) {
        const YAML::Node v = values[f.key];
        if (!v.IsDefined() || v.IsNull()) {
          fallback = "(none)";
        } else if (v.IsScalar() && f.type == "number") {
          fallback = fmt::format("{}", v.as<double>());  // shortest round trip: 1e-06, not 9.99...e-07
        } else if (v.IsScalar()) {
          fallback = v.Scalar();
        } else {
          YAML::Emitter e;
          e << YAML::Flow << v;
          fallback = e.c_str();
        }
      }
      rows.push_back({prefix + f.key, f.type, fallback, f.allowed, f.meaning, ""});
    }
    return rows;
  }

 private:
  std::vector<Field<T>> fields_;
  std::function<void(const Node&, const T&)> check_;
  std::set<std::string> keys_;
};

}  // namespace bitqat::core
