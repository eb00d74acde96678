// Test helper of the ops tests (tests/bitlinear/ops/): runs bitlinear::ops on the CUDA kernels built
// for the CPU harness (cuda/sim/).
#pragma once
#include "bitlinear/ops/route.hpp"
#include "cuda/sim/emulated.hpp"

namespace bitqat::testing {

// Routes the ops' CPU tensors through the harness's kernels while it lives.
struct EmulatedKernels : bitlinear::ops::ScopedCpuLaunchers {
  EmulatedKernels() : ScopedCpuLaunchers(&cuda::emulated::launchers()) {}
};

}  // namespace bitqat::testing
