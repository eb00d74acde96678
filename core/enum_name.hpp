// An enum's names in configs and files, written once beside the enum as a table of
// {value, name} rows: the parse, the resolved config, the config reference and error messages
// ("expected one of a|b|c") all read the same table.
#pragma once
#include <array>
#include <cstddef>
#include <cstring>

namespace bitqat::core {

//   inline constexpr std::array<core::EnumName<Ffn>, 3> kFfnNames = {{{Ffn::kRelu2, "relu2"}, ...}};
template <class E>
struct EnumName {
  E value;
  const char* name;
};

// The name of `value`, or "?" for a value the table lacks.
template <class E, size_t N>
const char* name_of(const std::array<EnumName<E>, N>& names, E value) {
  for (const auto& n : names) {
    if (n.value == value) return n.name;
  }
  return "?";
}

// Sets *out to the value named `name`; false (and *out unchanged) when no row has that name.
template <class E, size_t N>
bool value_of(const std::array<EnumName<E>, N>& names, const char* name, E* out) {
  for (const auto& n : names) {
    if (std::strcmp(n.name, name) == 0) {
      *out = n.value;
      return true;
    }
  }
  return false;
}

}  // namespace bitqat::core
