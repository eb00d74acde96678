// Declarations only: see training/gloo_decls/README.md. ProcessGroupGloo.hpp's inline
// setTimeout() names this member; the definition lives in libtorch_cpu.so.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
