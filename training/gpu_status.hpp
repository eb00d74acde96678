// Which parts of bitqat's GPU path a training run uses, and which of them a GPU has run: the checks
// of launch/gpu_check.sh that passed, read from the results committed under bench/results/*.json
// (their "steps" object: check name -> "passed" | "FAILED ..." | ...) when the build is configured.
// A run on a GPU logs once at start every path it uses that no recorded check covers.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "training/config.hpp"

namespace bitqat::training {

enum class GpuPath {
  kKernels,        // the W1.58A8 CUDA kernels (a quantized model's forward and backward)
  kLmStepBf16,     // an LM training step on one GPU under bf16 autocast
  kLmStepFp32,     // an LM training step on one GPU in float32
  kOtherModel,     // a CNN or DiT training step on a GPU
  kDistill,        // a distillation teacher on the GPU
  kNcclOneRank,    // the NCCL process group with one rank
  kNcclMultiRank,  // NCCL data parallelism over several GPUs
  kInference,      // eval, generate and sample on a GPU
};

struct GpuPathInfo {
  GpuPath path;
  const char* what;                  // for the log line
  std::vector<const char*> checks;   // gpu_check.sh steps that must all have passed; none: no check runs it
};

// The table: one row per path (the order of the log line).
const std::vector<GpuPathInfo>& gpu_paths();

// The paths a run of `cfg` on a GPU with `world_size` ranks and `autocast` uses.
std::vector<GpuPath> gpu_paths_of(const Config& cfg, int world_size, bool autocast);

// gpu_check.sh steps that passed in the results the build found (bench/results/*.json).
const std::set<std::string>& gpu_checks_passed();

// The warning train() logs once at start on a GPU (and eval, generate, sample print): the used paths
// that `passed` does not cover; empty when every used path has a passed check. Callers add how to
// run the tested CPU path.
std::string gpu_status_warning(const std::vector<GpuPath>& used, const std::set<std::string>& passed);

}  // namespace bitqat::training
