// Which kernels the op layer launches for a tensor: CUDA tensors run the GPU's kernels on their
// device's current stream; CPU tensors run, when a test routes them there (set_cpu_launchers), the
// same CUDA kernels built for the CPU harness of cuda/sim/, and otherwise the callers' CPU code (the
// scalar references, or bitlinear's CPU loops). Shared by every op of this folder.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include "cuda/launchers.hpp"

namespace bitqat::bitlinear::ops {

// Where the ops run CPU tensors: the scalar references (nullptr, the default) or a table of kernel
// launchers executed on the host: the CUDA kernels built for the CPU harness
// (bitqat::cuda::emulated::launchers(), cuda/sim/emulated.hpp), so that a test runs the ops'
// validation, allocation and layout handling end to end on the kernels themselves, with the same
// operand checks as on a GPU (16-byte alignment included). Process-wide; for tests.
void set_cpu_launchers(const cuda::Launchers* launchers);
const cuda::Launchers* cpu_launchers();

// set_cpu_launchers(launchers) for its lifetime, then back to the previous choice (tests).
class ScopedCpuLaunchers {
 public:
  explicit ScopedCpuLaunchers(const cuda::Launchers* launchers) : previous_(cpu_launchers()) {
    set_cpu_launchers(launchers);
  }
  ~ScopedCpuLaunchers() { set_cpu_launchers(previous_); }
  ScopedCpuLaunchers(const ScopedCpuLaunchers&) = delete;
  ScopedCpuLaunchers& operator=(const ScopedCpuLaunchers&) = delete;

 private:
  const cuda::Launchers* previous_;
};

// Whether tensors on `dev` run on kernels (CUDA, or the CPU when routed to the harness).
bool uses_kernels(const at::Device& dev);

// The kernels that serve a tensor and the stream to launch them on, with the tensor's device made
// current for the route's lifetime: CUDA tensors get the GPU's kernels on their device's current
// stream; CPU tensors the harness's when routed there; none for CPU tensors otherwise.
class Route {
 public:
  explicit Route(const at::Tensor& t);
  explicit operator bool() const { return kernels != nullptr; }
  const cuda::Launchers* kernels = nullptr;
  cudaStream_t stream = nullptr;

 private:
  c10::OptionalDeviceGuard guard_;
};

}  // namespace bitqat::bitlinear::ops
