#include "bitlinear/ops/route.hpp"

#include <ATen/cuda/CUDAContext.h>

#include <atomic>

namespace bitqat::bitlinear::ops {
namespace {

std::atomic<const cuda::Launchers*> g_cpu_launchers{nullptr};

}  // namespace

void set_cpu_launchers(const cuda::Launchers* launchers) { g_cpu_launchers.store(launchers); }
const cuda::Launchers* cpu_launchers() { return g_cpu_launchers.load(); }

bool uses_kernels(const at::Device& dev) { return dev.is_cuda() || (dev.is_cpu() && cpu_launchers() != nullptr); }

Route::Route(const at::Tensor& t) {
  if (t.is_cuda()) {
    guard_.reset_device(t.device());  // before the stream: the current stream of t's device
    kernels = &cuda::launchers();
    stream = at::cuda::getCurrentCUDAStream();
  } else if (t.device().is_cpu()) {
    kernels = cpu_launchers();
  }
}

}  // namespace bitqat::bitlinear::ops
