// Which W1.58A8 matmul kernel (cuda/w158a8.hpp Plan) serves a shape on a device. The table of
// measured winners (cuda/dispatch_table.inc) is generated from a results file of the GPU check
// (bench/results/<device>-<date>.json) by tools/dispatch_table.py, and a test keeps the two in step.
// A device the table does not name, or a plan that cannot serve the call, takes the default: today's
// kernels (kGemvColumn for M <= 16, kMma otherwise). Host code only; no LibTorch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/w158a8.hpp"

namespace bitqat::cuda {

// One measured winner: for `device` (the exact cudaDeviceProp name) and M in [m_lo, m_hi], at N x K,
// kernel `best` (its kernel_name) split in best_splits parts was fastest; `per_group` is the fastest
// that takes per-group scales (cuBLAS does not).
struct DispatchRow {
  const char* device;
  int64_t m_lo, m_hi, n, k;
  const char* best;
  int best_splits;
  const char* per_group;
  int per_group_splits;
};

// The kernel whose kernel_name is `name`; false when none is.
bool kernel_from_name(const char* name, Kernel* kernel);

// The rows of cuda/dispatch_table.inc.
const std::vector<DispatchRow>& dispatch_table();

// Today's kernels: the one-warp-per-column GEMV for M <= 16, the 64 x 64 mma.sync GEMM above.
Plan default_plan(int64_t m);

// The plan for one call: among the device's rows whose M range holds m, the one at the same N x K,
// else the nearest (the smallest |log2(N / n)| + |log2(K / k)|); its best plan, or its per-group
// plan for per-group scales; the default when no row applies, a name is unknown or the plan cannot
// serve (M, K, kind).
Plan choose_plan(const std::string& device, int64_t m, int64_t n, int64_t k, ScaleKind kind,
                 const std::vector<DispatchRow>& table);
Plan choose_plan(const std::string& device, int64_t m, int64_t n, int64_t k, ScaleKind kind);

}  // namespace bitqat::cuda
