#include "training/gpu_status.hpp"

#include <fmt/format.h>

#include <sstream>

namespace bitqat::training {

const std::vector<GpuPathInfo>& gpu_paths() {
  // The checks: launch/gpu_check.sh's step names. Its NCCL step trains configs/quickstart.yaml (an LM,
  // ternary, precision auto: bf16 autocast) on one GPU with one NCCL rank.
  static const std::vector<GpuPathInfo> table = {
      {GpuPath::kKernels, "the W1.58A8 CUDA kernels", {"tests", "reference_tests", "memcheck"}},
      {GpuPath::kLmStepBf16, "an LM training step under bf16 autocast", {"nccl"}},
      {GpuPath::kLmStepFp32, "an LM training step in float32 (device.precision: fp32)", {}},
      {GpuPath::kOtherModel, "a CNN or DiT training step", {}},
      {GpuPath::kDistill, "a distillation teacher", {}},
      {GpuPath::kNcclOneRank, "the NCCL process group", {"nccl"}},
      {GpuPath::kNcclMultiRank, "NCCL data parallelism over several GPUs", {"nccl_multi_gpu"}},
      {GpuPath::kInference, "eval, generate and sample", {"tests", "generate_graph"}},
  };
  return table;
}

std::vector<GpuPath> gpu_paths_of(const Config& cfg, int world_size, bool autocast) {
  std::vector<GpuPath> used;
  const auto& spec = cfg.quant.spec;
  if (spec.weight.type != bitlinear::WeightQuant::kNone || spec.act.type != bitlinear::ActQuant::kNone) {
    used.push_back(GpuPath::kKernels);
  }
  if (cfg.model.kind == models::ModelKind::kLM) {
    used.push_back(autocast ? GpuPath::kLmStepBf16 : GpuPath::kLmStepFp32);
  } else {
    used.push_back(GpuPath::kOtherModel);
  }
  if (cfg.distill.enabled) used.push_back(GpuPath::kDistill);
  if (world_size > 1) {
    used.push_back(GpuPath::kNcclMultiRank);
  } else if (cfg.dist.backend != Backend::kGloo) {
    used.push_back(GpuPath::kNcclOneRank);
  }
  return used;
}

const std::set<std::string>& gpu_checks_passed() {
  static const std::set<std::string> passed = [] {
    std::set<std::string> s;
    std::istringstream in(BITQAT_GPU_CHECKS_PASSED);  // ','-separated, from training/CMakeLists.txt
    for (std::string name; std::getline(in, name, ',');) {
      if (!name.empty()) s.insert(name);
    }
    return s;
  }();
  return passed;
}

std::string gpu_status_warning(const std::vector<GpuPath>& used, const std::set<std::string>& passed) {
  std::vector<std::string> missing;
  for (const auto& row : gpu_paths()) {
    bool uses = false;
    for (auto p : used) uses = uses || p == row.path;
    if (!uses) continue;
    bool covered = !row.checks.empty();
    for (const char* c : row.checks) covered = covered && passed.count(c) > 0;
    if (!covered) missing.emplace_back(row.what);
  }
  if (missing.empty()) return "";
  return fmt::format(
      "this GPU run is unverified: no GPU run of {} is recorded in bench/results/ (launch/gpu_check.sh writes "
      "them); the CUDA kernels are checked against their references on the CPU only.",
      fmt::join(missing, ", "));
}

}  // namespace bitqat::training
