#include "cuda/dispatch.hpp"

#include <cmath>
#include <cstring>
#include <limits>

namespace bitqat::cuda {

const std::vector<DispatchRow>& dispatch_table() {
  static const std::vector<DispatchRow> table = {
#include "cuda/dispatch_table.inc"
  };
  return table;
}

bool kernel_from_name(const char* name, Kernel* kernel) {
  for (int i = 0; i < kKernelCount; ++i) {
    if (std::strcmp(kernel_name(static_cast<Kernel>(i)), name) == 0) {
      *kernel = static_cast<Kernel>(i);
      return true;
    }
  }
  return false;
}

Plan default_plan(int64_t m) { return Plan{uses_gemv(m) ? Kernel::kGemvColumn : Kernel::kMma, 1}; }

Plan choose_plan(const std::string& device, int64_t m, int64_t n, int64_t k, ScaleKind kind,
                 const std::vector<DispatchRow>& table) {
  const DispatchRow* pick = nullptr;
  double best = std::numeric_limits<double>::infinity();
  for (const auto& r : table) {
    if (device != r.device || m < r.m_lo || m > r.m_hi) continue;
    const double d = std::fabs(std::log2(static_cast<double>(r.n) / static_cast<double>(n))) +
                     std::fabs(std::log2(static_cast<double>(r.k) / static_cast<double>(k)));
    if (d < best) {
      best = d;
      pick = &r;
    }
  }
  if (!pick) return default_plan(m);
  Plan plan;
  const bool group = kind == ScaleKind::kPerGroup;
  if (!kernel_from_name(group ? pick->per_group : pick->best, &plan.kernel)) return default_plan(m);
  plan.splits = group ? pick->per_group_splits : pick->best_splits;
  return *plan_refusal(plan, m, k, kind) ? default_plan(m) : plan;
}

Plan choose_plan(const std::string& device, int64_t m, int64_t n, int64_t k, ScaleKind kind) {
  return choose_plan(device, m, n, k, kind, dispatch_table());
}

}  // namespace bitqat::cuda
