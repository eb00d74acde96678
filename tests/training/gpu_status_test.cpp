#include "training/gpu_status.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

using bitqat::training::Config;
using bitqat::training::GpuPath;
using bitqat::training::gpu_paths_of;
using bitqat::training::gpu_status_warning;

namespace {

Config load(const std::string& extra) {
  return Config::load_string("model: {kind: lm, dim: 32, n_layers: 1, n_heads: 2, max_seq_len: 16}\n"
                             "data: {kind: text, path: unused.txt, seq_len: 16}\n" + extra,
                             "g.yaml", {}, /*check_files=*/false);
}

}  // namespace

// The checks the build compiled in are exactly those marked "passed" in bench/results/*.json.
TEST(GpuStatus, PassedChecksAreThoseOfTheCommittedResults) {
  std::set<std::string> expected;
  const std::filesystem::path results = std::string(BITQAT_SOURCE_DIR) + "/bench/results";
  if (std::filesystem::is_directory(results)) {
    for (const auto& e : std::filesystem::directory_iterator(results)) {
      if (e.path().extension() != ".json") continue;
      const auto j = nlohmann::json::parse(std::ifstream(e.path()));
      if (!j.contains("steps")) continue;
      for (const auto& [name, status] : j["steps"].items()) {
        if (status == "passed") expected.insert(name);
      }
    }
  }
  EXPECT_EQ(bitqat::training::gpu_checks_passed(), expected);
}

TEST(GpuStatus, PathsOfARun) {
  using V = std::vector<GpuPath>;
  // A ternary LM (the defaults quantize weights and activations), one process, bf16 autocast.
  EXPECT_EQ(gpu_paths_of(load(""), 1, true), (V{GpuPath::kKernels, GpuPath::kLmStepBf16, GpuPath::kNcclOneRank}));
  // Full precision, float32, Gloo: no kernels, no NCCL.
  EXPECT_EQ(gpu_paths_of(load("quant: {weight: {type: none}, activation: {type: none}}\ndist: {backend: gloo}\n"), 1,
                         false),
            (V{GpuPath::kLmStepFp32}));
  // Several ranks.
  EXPECT_EQ(gpu_paths_of(load(""), 8, true), (V{GpuPath::kKernels, GpuPath::kLmStepBf16, GpuPath::kNcclMultiRank}));
  const auto dit = Config::load_string("model: {kind: dit}\ndata: {kind: fashion_mnist}\n", "d.yaml", {}, false);
  EXPECT_EQ(gpu_paths_of(dit, 1, true), (V{GpuPath::kKernels, GpuPath::kOtherModel, GpuPath::kNcclOneRank}));
}

TEST(GpuStatus, WarnsOfEveryUsedPathWithoutAPassedCheck) {
  const std::vector<GpuPath> used = {GpuPath::kKernels, GpuPath::kLmStepBf16, GpuPath::kNcclOneRank};
  const auto none = gpu_status_warning(used, {});
  EXPECT_NE(none.find("unverified"), std::string::npos) << none;
  EXPECT_NE(none.find("the W1.58A8 CUDA kernels, an LM training step under bf16 autocast, the NCCL process group"),
            std::string::npos)
      << none;
  EXPECT_NE(none.find("bench/results/"), std::string::npos) << none;
  // The kernels need all three of their checks; the NCCL step covers the bf16 step and the process group.
  const auto part = gpu_status_warning(used, {"tests", "reference_tests", "nccl"});
  EXPECT_NE(part.find("of the W1.58A8 CUDA kernels is recorded"), std::string::npos) << part;
  EXPECT_EQ(part.find("NCCL"), std::string::npos) << part;
  EXPECT_EQ(gpu_status_warning(used, {"tests", "reference_tests", "memcheck", "nccl"}), "");
  // A path no check runs stays unverified whatever passed.
  const auto multi = gpu_status_warning({GpuPath::kNcclMultiRank}, {"tests", "reference_tests", "memcheck", "nccl"});
  EXPECT_NE(multi.find("NCCL data parallelism over several GPUs"), std::string::npos) << multi;
}
