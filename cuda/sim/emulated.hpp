// The CUDA kernels built for the CPU harness (cuda/sim/), as a launcher table, for code compiled
// against the CUDA toolkit's own headers: the ops' tests route CPU tensors through it
// (bitlinear/ops/route.hpp set_cpu_launchers). Link bitqat_cuda_sim.
#pragma once
#include "cuda/launchers.hpp"

namespace bitqat::cuda::emulated {
const Launchers& launchers();
}  // namespace bitqat::cuda::emulated
