// The W1.58A8 launchers (cuda/w158a8.hpp): argument checks, plans, workspaces and the split-K
// reduction around the kernels of cuda/w158a8_gemv.cu, w158a8_mma.cu and w158a8_cublas.cu; and the
// activation quantization and quantize-and-pack launchers built on cuda/quant.hpp.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cuda/check.hpp"
#include "cuda/quant.hpp"
#include "cuda/w158a8.hpp"
#include "cuda/w158a8_kernels.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace {

using w158a8::Out;
using w158a8::OutMode;
using w158a8::Problem;

constexpr int kMaxSplits = 64;

void check_sizes(int64_t m, int64_t n, int64_t k) {
  if (m < 1 || n < 1 || k < 1) {
    throw std::invalid_argument("w158a8: M, N and K must be >= 1, got " + std::to_string(m) + ", " + std::to_string(n) +
                                ", " + std::to_string(k));
  }
}

// Rows of output tiles per block of the tensor-core kernels (the grid's y dimension, at most 65535).
int64_t tile_rows(Kernel kernel) { return kernel == Kernel::kMmaSmall ? 32 : 64; }

void check_plan(const char* what, const Plan& plan, int64_t m, int64_t k, ScaleKind kind) {
  const char* why = plan_refusal(plan, m, k, kind);
  if (!*why && plan.kernel == Kernel::kGemvFused && std::string(what) != "w158a8_linear_m1") {
    why = "gemv_fused starts from float activations: w158a8_linear_m1";
  }
  if (*why) {
    throw std::invalid_argument(std::string(what) + ": plan " + kernel_name(plan.kernel) + " x " +
                                std::to_string(plan.splits) + " cannot serve M = " + std::to_string(m) + ": " + why);
  }
}

void check_kind(const char* what, ScaleKind kind, int64_t group) {
  if (kind != ScaleKind::kPerTensor && kind != ScaleKind::kPerChannel && kind != ScaleKind::kPerGroup) {
    throw std::invalid_argument(std::string(what) + ": unknown scale kind " + std::to_string(static_cast<int>(kind)));
  }
  if (kind == ScaleKind::kPerGroup && (group < 1 || group % kGroupAlign != 0)) {
    throw std::invalid_argument(std::string(what) + ": group size must be a positive multiple of 64, got " +
                                std::to_string(group));
  }
}

// Split-K partials [splits, M, N] of 4 bytes (int32 or float), then 16 bytes for the fused kernel's
// token scale.
size_t partial_bytes(const Plan& plan, int64_t m, int64_t n) {
  return plan.splits > 1 ? static_cast<size_t>(plan.splits) * static_cast<size_t>(m * n) * 4 : 0;
}
size_t split_workspace_bytes(const Plan& plan, int64_t m, int64_t n) {
  return plan.splits > 1 ? partial_bytes(plan, m, n) + 16 : 0;
}

// Runs `plan` on problem p into out (already the caller's final destination), through the workspace.
void run(const Plan& plan, const Problem& p, const int8_t* expanded, const Out& out, void* workspace,
         size_t workspace_size, cudaStream_t stream) {
  const size_t need = workspace_bytes(plan, p.m, p.n, p.k, p.per_group ? ScaleKind::kPerGroup : ScaleKind::kPerChannel,
                                      expanded != nullptr);
  if (need > 0 && (!workspace || workspace_size < need)) {
    throw std::invalid_argument("w158a8_matmul: plan " + std::string(kernel_name(plan.kernel)) + " x " +
                                std::to_string(plan.splits) + " needs " + std::to_string(need) +
                                " bytes of workspace, got " + std::to_string(workspace ? workspace_size : 0));
  }
  auto* ws_bytes = static_cast<char*>(workspace);
  if (plan.kernel == Kernel::kCublasInt8) {
    auto* sums = reinterpret_cast<int32_t*>(ws_bytes);
    if (!expanded) {
      auto* e = reinterpret_cast<int8_t*>(ws_bytes + static_cast<size_t>(p.m * p.n) * 4);
      w158a8::launch_expand(p.packed, p.n, p.kp, e, stream);
      expanded = e;
    }
    if (out.mode == OutMode::kRaw) {
      w158a8::launch_cublas_int8(p, expanded, out.y_int, stream);
    } else {
      w158a8::launch_cublas_int8(p, expanded, sums, stream);
      w158a8::launch_epilogue(sums, p, out, stream);
    }
    return;
  }
  Out first = out;
  if (plan.splits > 1) {
    first.mode = OutMode::kPartial;
    first.partial = workspace;
  }
  switch (plan.kernel) {
    case Kernel::kGemvColumn:
      w158a8::launch_gemv_column(p, first, stream);
      break;
    case Kernel::kGemvTiled:
      w158a8::launch_gemv_tiled(p, plan.splits, first, stream);
      break;
    default:
      w158a8::launch_mma(plan.kernel, p, plan.splits, first, stream);
      break;
  }
  if (plan.splits > 1) w158a8::launch_reduce(workspace, p, plan.splits, out, stream);
}

Problem problem(const int8_t* q, int64_t m, const uint32_t* packed, const float* wscales, ScaleKind kind, int64_t group,
                int64_t n, int64_t k) {
  const int64_t kp = padded_k(k);
  const bool per_group = kind == ScaleKind::kPerGroup;
  const int64_t stride = kind == ScaleKind::kPerTensor ? 0 : (per_group ? scale_groups(k, group) : 1);
  return Problem{q, m, n, k, kp, packed, per_group, wscales, stride, per_group ? group : kp};
}

}  // namespace

const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::kGemvColumn:
      return "gemv_column";
    case Kernel::kGemvTiled:
      return "gemv_tiled";
    case Kernel::kMmaSmall:
      return "mma_small";
    case Kernel::kMma:
      return "mma";
    case Kernel::kMmaPipelined:
      return "mma_pipelined";
    case Kernel::kCublasInt8:
      return "cublas_int8";
    case Kernel::kGemvFused:
      return "gemv_fused";
  }
  return "unknown";
}

const char* plan_refusal(const Plan& plan, int64_t m, int64_t k, ScaleKind kind) {
  if (static_cast<int>(plan.kernel) < 0 || static_cast<int>(plan.kernel) >= kKernelCount) return "unknown kernel";
  if (plan.splits < 1 || plan.splits > kMaxSplits) return "splits must be in [1, 64]";
  switch (plan.kernel) {
    case Kernel::kGemvColumn:
      if (m > 16) return "the GEMVs take M <= 16";
      if (plan.splits != 1) return "gemv_column does not split K";
      return "";
    case Kernel::kGemvTiled:
      return m > 16 ? "the GEMVs take M <= 16" : "";
    case Kernel::kGemvFused:
      if (m != 1) return "gemv_fused takes one token (M = 1)";
      return k > kFusedMaxK ? "gemv_fused takes K <= 32768" : "";
    case Kernel::kCublasInt8:
      if (kind == ScaleKind::kPerGroup) return "cublas_int8 takes per-tensor or per-channel scales only";
      if (plan.splits != 1) return "cublas_int8 does not split K";
      return "";
    default:
      if ((m + tile_rows(plan.kernel) - 1) / tile_rows(plan.kernel) > 65535) {
        return "M exceeds the GEMM grid (65535 rows of tiles); split the batch";
      }
      return "";
  }
}

size_t workspace_bytes(const Plan& plan, int64_t m, int64_t n, int64_t k, ScaleKind kind, bool have_expanded) {
  (void)kind;
  if (plan.kernel == Kernel::kCublasInt8) {
    return static_cast<size_t>(m * n) * 4 + (have_expanded ? 0 : static_cast<size_t>(n * padded_k(k)));
  }
  return split_workspace_bytes(plan, m, n);
}

void quantize_activations(const void* x, DType x_dtype, int64_t m, int64_t k, float eps, const float* norm_weight,
                          float norm_eps, int8_t* q, float* scales, cudaStream_t stream) {
  check_sizes(m, 1, k);
  quantize_rows(x, x_dtype, m, k, padded_k(k), eps, 127, norm_weight, norm_eps, q, scales, stream);
}

void quantize_pack_ternary(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps,
                           float* scales, int8_t* codes, double* workspace, uint32_t* packed, cudaStream_t stream) {
  check_sizes(1, n, k);
  if (kind == ScaleKind::kPerGroup && (group < 1 || group % kGroupAlign != 0)) {
    throw std::invalid_argument("quantize_pack_ternary: group size must be a positive multiple of 64, got " +
                                std::to_string(group));
  }
  const int64_t g = kind == ScaleKind::kPerGroup ? group : k;
  const int64_t stride = kind == ScaleKind::kPerTensor ? 0 : scale_groups(k, g);
  weight_scales(w, n, k, g, kind == ScaleKind::kPerTensor, scales, nullptr, workspace, stream);
  weight_codes(w, n, k, g, stride, scales, nullptr, eps, codes, stream);
  pack_codes(codes, n, k, packed, stream);
}

void w158a8_matmul_plan(const Plan& plan, const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed,
                        const int8_t* expanded, const float* wscales, ScaleKind kind, int64_t group, int64_t n,
                        int64_t k, const float* bias, void* y, DType y_dtype, void* workspace, size_t workspace_size,
                        cudaStream_t stream) {
  check_sizes(m, n, k);
  check_kind("w158a8_matmul", kind, group);
  check_plan("w158a8_matmul", plan, m, k, kind);
  if (y_dtype != DType::kF32 && y_dtype != DType::kBF16) {
    throw std::invalid_argument("w158a8_matmul: output dtype must be float32 or bf16, got code " +
                                std::to_string(static_cast<int>(y_dtype)));
  }
  if (!q || !xscales || !packed || !wscales || !y) {
    throw std::invalid_argument("w158a8_matmul: null operand (q, xscales, packed, wscales and y are required)");
  }
  const Problem p = problem(q, m, packed, wscales, kind, group, n, k);
  const Out out{y_dtype == DType::kF32 ? OutMode::kF32 : OutMode::kBF16,
                m,
                n,
                nullptr,
                nullptr,
                y,
                xscales,
                wscales,
                kind == ScaleKind::kPerTensor ? 0 : 1,
                bias};
  run(plan, p, expanded, out, workspace, workspace_size, stream);
}

void w158a8_matmul(const int8_t* q, const float* xscales, int64_t m, const uint32_t* packed, const float* wscales,
                   ScaleKind kind, int64_t group, int64_t n, int64_t k, const float* bias, void* y, DType y_dtype,
                   cudaStream_t stream) {
  const Plan plan{uses_gemv(m) ? Kernel::kGemvColumn : Kernel::kMma, 1};
  w158a8_matmul_plan(plan, q, xscales, m, packed, nullptr, wscales, kind, group, n, k, bias, y, y_dtype, nullptr, 0,
                     stream);
}

void w158a8_matmul_int32_plan(const Plan& plan, const int8_t* q, int64_t m, const uint32_t* packed,
                              const int8_t* expanded, int64_t n, int64_t k, int32_t* y_int, void* workspace,
                              size_t workspace_size, cudaStream_t stream) {
  check_sizes(m, n, k);
  check_plan("w158a8_matmul_int32", plan, m, k, ScaleKind::kPerTensor);
  if (!q || !packed || !y_int) throw std::invalid_argument("w158a8_matmul_int32: null operand");
  const Problem p = problem(q, m, packed, nullptr, ScaleKind::kPerTensor, 0, n, k);
  const Out out{OutMode::kRaw, m, n, y_int, nullptr, nullptr, nullptr, nullptr, 0, nullptr};
  run(plan, p, expanded, out, workspace, workspace_size, stream);
}

void w158a8_matmul_int32(const int8_t* q, int64_t m, const uint32_t* packed, int64_t n, int64_t k, int32_t* y_int,
                         cudaStream_t stream) {
  const Plan plan{uses_gemv(m) ? Kernel::kGemvColumn : Kernel::kMma, 1};
  w158a8_matmul_int32_plan(plan, q, m, packed, nullptr, n, k, y_int, nullptr, 0, stream);
}

void w158a8_linear_m1(const void* x, DType x_dtype, int64_t k, float eps, const float* norm_weight, float norm_eps,
                      const uint32_t* packed, const float* wscales, ScaleKind kind, int64_t group, int64_t n,
                      const float* bias, void* y, DType y_dtype, int splits, void* workspace, size_t workspace_size,
                      cudaStream_t stream) {
  check_sizes(1, n, k);
  check_kind("w158a8_linear_m1", kind, group);
  if (k > kFusedMaxK) {
    throw std::invalid_argument("w158a8_linear_m1: K = " + std::to_string(k) + " exceeds " +
                                std::to_string(kFusedMaxK) + " (the codes live in shared memory)");
  }
  const Plan plan{Kernel::kGemvFused, splits};
  check_plan("w158a8_linear_m1", plan, 1, k, kind);
  if ((x_dtype != DType::kF32 && x_dtype != DType::kBF16) || (y_dtype != DType::kF32 && y_dtype != DType::kBF16)) {
    throw std::invalid_argument("w158a8_linear_m1: x and y must be float32 or bf16");
  }
  if (!x || !packed || !wscales || !y) throw std::invalid_argument("w158a8_linear_m1: null operand");
  const size_t need = workspace_bytes(plan, 1, n, k, kind, false);
  if (need > 0 && (!workspace || workspace_size < need)) {
    throw std::invalid_argument("w158a8_linear_m1: " + std::to_string(splits) + " splits need " + std::to_string(need) +
                                " bytes of workspace");
  }
  const Problem p = problem(nullptr, 1, packed, wscales, kind, group, n, k);
  const Out out{y_dtype == DType::kF32 ? OutMode::kF32 : OutMode::kBF16,
                1,
                n,
                nullptr,
                nullptr,
                y,
                nullptr,
                wscales,
                kind == ScaleKind::kPerTensor ? 0 : 1,
                bias};
  if (splits == 1) {
    w158a8::launch_gemv_fused(x, x_dtype, norm_weight, eps, norm_eps, p, 1, out, nullptr, stream);
    return;
  }
  // Split: the parts write their partials and one block the token's scale (behind the partials);
  // the reduction then divides by it.
  Out first = out;
  first.mode = OutMode::kPartial;
  first.partial = workspace;
  auto* scale = reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_bytes(plan, 1, n));
  w158a8::launch_gemv_fused(x, x_dtype, norm_weight, eps, norm_eps, p, splits, first, scale, stream);
  Out last = out;
  last.xs = scale;
  w158a8::launch_reduce(workspace, p, splits, last, stream);
}

void expand_packed(const uint32_t* packed, int64_t n, int64_t k, int8_t* expanded, cudaStream_t stream) {
  check_sizes(1, n, k);
  if (!packed || !expanded) throw std::invalid_argument("expand_packed: null operand");
  w158a8::launch_expand(packed, n, padded_k(k), expanded, stream);
}

const char* current_device_name() {
  static thread_local char name[256] = {};
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  std::snprintf(name, sizeof name, "%s", prop.name);
  return name;
}

BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
