// A small flag parser for the subcommands: positionals, --flag, --key value, --key=value,
// repeatable --set; unknown flags and missing values are user errors naming the flag.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

namespace bitqat::apps {

struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // --key value
  std::set<std::string> flags;                // --flag
  std::vector<std::string> sets;              // every --set k=v, in order
  bool help = false;

  // A numeric --key value, or the fallback; a value that is not a number is a UserError naming it.
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
};

// `value_keys`: flags that take a value; `bool_flags`: flags without one. --set is always allowed.
ParsedArgs parse_args(const std::string& command, const std::vector<std::string>& args,
                      const std::set<std::string>& value_keys, const std::set<std::string>& bool_flags);

}  // namespace bitqat::apps
