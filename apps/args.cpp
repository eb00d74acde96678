#include "apps/args.hpp"

#include <fmt/format.h>

#include "core/error.hpp"

namespace bitqat::apps {

int64_t ParsedArgs::get_int(const std::string& key, int64_t fallback) const {
  const auto it = values.find(key);
  if (it == values.end()) return fallback;
  size_t pos = 0;
  try {
    const auto v = std::stoll(it->second, &pos);
    if (pos == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  throw core::UserError(fmt::format("--{} = '{}': expected an integer", key, it->second));
}

double ParsedArgs::get_double(const std::string& key, double fallback) const {
  const auto it = values.find(key);
  if (it == values.end()) return fallback;
  size_t pos = 0;
  try {
    const auto v = std::stod(it->second, &pos);
    if (pos == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  throw core::UserError(fmt::format("--{} = '{}': expected a number", key, it->second));
}

ParsedArgs parse_args(const std::string& command, const std::vector<std::string>& args,
                      const std::set<std::string>& value_keys, const std::set<std::string>& bool_flags) {
  ParsedArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      out.help = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || a == "--") {
      out.positional.push_back(a);
      continue;
    }
    std::string key = a.substr(2);
    std::string value;
    bool has_value = false;
    if (const auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
      has_value = true;
    }
    if (key == "set" || value_keys.count(key)) {
      if (!has_value) {
        if (i + 1 >= args.size()) {
          throw core::UserError(fmt::format("bitqat {}: --{} needs a value", command, key));
        }
        value = args[++i];
      }
      if (key == "set") {
        out.sets.push_back(value);
      } else {
        out.values[key] = value;
      }
    } else if (bool_flags.count(key) && !has_value) {
      out.flags.insert(key);
    } else {
      throw core::UserError(fmt::format("bitqat {}: unknown option '{}' (see bitqat {} --help)", command, a, command));
    }
  }
  return out;
}

}  // namespace bitqat::apps
