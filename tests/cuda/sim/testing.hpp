// Helpers of the CPU harness's tests: the configurations every kernel test runs under, the text of a
// launch's fault, and source lines for checking that reports name them.
#pragma once
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "cuda/sim/runtime.hpp"

namespace bitqat::cuda::sim::testing {

// Index order with poison 0xA5, a seeded shuffle with 0x00, and reverse order with 0x3C (left out
// for the largest shapes, where it costs a full run): a missing barrier or a read of uninitialised
// shared memory then changes a result (zero among the patterns: code that assumes zeroed shared
// memory differs too).
// The sanitizer build runs index order only: its checks (bounds, shifts, overflow) do not depend on
// the order, and it has no race detector or poisoning to feed.
inline std::vector<Options> harness_configs(bool with_reverse = true) {
#if defined(__SANITIZE_ADDRESS__)
  (void)with_reverse;
  return {{Order::kIndex, 1, 0xA5}};
#endif
  std::vector<Options> c = {{Order::kIndex, 1, 0xA5}, {Order::kShuffle, 20261206, 0x00}};
  if (with_reverse) c.push_back({Order::kReverse, 1, 0x3C});
  return c;
}

inline std::string config_name(const Options& o) {
  const char* order = o.order == Order::kIndex ? "index" : o.order == Order::kReverse ? "reverse" : "shuffle";
  return std::string(order) + " order, poison " + std::to_string(o.poison);
}

// The KernelFault text f() throws, or "no fault".
inline std::string fault_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const KernelFault& e) {
    return e.what();
  }
  return "no fault";
}

// The number of the first line of `file` (relative to the repository root) containing `text` at or
// after the first line containing `after`; -1 if none.
inline int line_of(const std::string& file, const std::string& after, const std::string& text) {
  std::ifstream in(std::string(BITQAT_SOURCE_DIR) + "/" + file);
  std::string line;
  bool seen = false;
  for (int n = 1; std::getline(in, line); ++n) {
    seen = seen || line.find(after) != std::string::npos;
    if (seen && line.find(text) != std::string::npos) return n;
  }
  return -1;
}

}  // namespace bitqat::cuda::sim::testing
