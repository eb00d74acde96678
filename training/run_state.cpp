#include "training/run_state.hpp"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <fmt/format.h>

#include "core/error.hpp"

namespace bitqat::training {

std::vector<std::pair<std::string, at::Tensor>> rng_states() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto& ctx = at::globalContext();
  out.emplace_back("rng.cpu", ctx.defaultGenerator(at::Device(at::kCPU)).get_state());
  if (ctx.hasCUDA()) {
    const auto n = static_cast<int>(at::detail::getCUDAHooks().deviceCount());
    for (int i = 0; i < n; ++i) {
      out.emplace_back(fmt::format("rng.cuda.{}", i), ctx.defaultGenerator(at::Device(at::kCUDA, i)).get_state());
    }
  }
  return out;
}

void restore_rng_states(const std::map<std::string, at::Tensor>& tensors, const std::string& origin) {
  auto& ctx = at::globalContext();
  for (const auto& [name, state] : tensors) {
    int cuda_index = -1;
    if (name != "rng.cpu") {
      const std::string prefix = "rng.cuda.";
      const std::string digits = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : "";
      if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos) {
        throw core::UserError(
            fmt::format("{}: tensor '{}' is not a generator state this program writes (expected rng.cpu or rng.cuda.N)",
                        origin, name));
      }
      cuda_index = std::stoi(digits);
    }
    if (state.scalar_type() != at::kByte || state.dim() != 1) {
      throw core::UserError(fmt::format("{}: tensor '{}' is {} [{}]; a generator state is uint8 [n]", origin, name,
                                        c10::toString(state.scalar_type()), fmt::join(state.sizes(), ", ")));
    }
    try {
      if (cuda_index < 0) {
        at::Generator g = ctx.defaultGenerator(at::Device(at::kCPU));
        g.set_state(state);
      } else if (ctx.hasCUDA() && cuda_index < static_cast<int>(at::detail::getCUDAHooks().deviceCount())) {
        at::Generator g = ctx.defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index)));
        g.set_state(state);
      }
    } catch (const c10::Error& e) {
      throw core::UserError(
          fmt::format("{}: tensor '{}' is not a valid generator state: {}", origin, name, e.what_without_backtrace()));
    }
  }
}

}  // namespace bitqat::training
