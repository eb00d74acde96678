// core/cpu_isa.hpp: the kernel variants this CPU runs (against the kernel's own flag list in
// /proc/cpuinfo), the variant chosen for each LibTorch capability, and the oneDNN instruction-set
// default, set only where the user left it unset.
#include "core/cpu_isa.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>

using bitqat::core::CpuIsa;

namespace {

// Restores ONEDNN_MAX_CPU_ISA as the test found it (launch/test.sh sets it per pass).
class SavedEnv {
 public:
  SavedEnv() {
    if (const char* v = std::getenv("ONEDNN_MAX_CPU_ISA")) saved_ = v;
  }
  ~SavedEnv() {
    if (saved_) {
      ::setenv("ONEDNN_MAX_CPU_ISA", saved_->c_str(), 1);
    } else {
      ::unsetenv("ONEDNN_MAX_CPU_ISA");
    }
  }

 private:
  std::optional<std::string> saved_;
};

// The feature flags Linux reports for the first CPU (empty where /proc/cpuinfo is missing).
std::set<std::string> cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

}  // namespace

TEST(CpuIsa, TheVariantsThisCpuRunsAreThoseItsFlagsList) {
  const auto flags = cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo";
  auto has = [&](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      if (!flags.count(n)) return false;
    }
    return true;
  };
  EXPECT_TRUE(bitqat::core::cpu_runs(CpuIsa::kDefault));
  EXPECT_EQ(bitqat::core::cpu_runs(CpuIsa::kAvx2), has({"avx2", "fma"}));
  EXPECT_EQ(bitqat::core::cpu_runs(CpuIsa::kAvx512), has({"avx512f", "avx512bw", "avx512vl", "avx512dq"}));
}

TEST(CpuIsa, KernelsFollowLibTorchsCapabilityWhereTheCpuRunsIt) {
  using bitqat::core::cpu_runs;
  using bitqat::core::kernel_isa;
  EXPECT_EQ(kernel_isa("DEFAULT"), CpuIsa::kDefault);
  EXPECT_EQ(kernel_isa("AVX2"), cpu_runs(CpuIsa::kAvx2) ? CpuIsa::kAvx2 : CpuIsa::kDefault);
  EXPECT_EQ(kernel_isa("AVX512"), cpu_runs(CpuIsa::kAvx512) ? CpuIsa::kAvx512 : CpuIsa::kDefault);
  // Capabilities of other architectures, and names LibTorch does not use, are the baseline.
  EXPECT_EQ(kernel_isa("ZVECTOR"), CpuIsa::kDefault);
  EXPECT_EQ(kernel_isa("avx512"), CpuIsa::kDefault);
  EXPECT_EQ(kernel_isa(""), CpuIsa::kDefault);
  std::set<std::string> names;
  for (const auto isa : bitqat::core::kCpuIsas) names.insert(bitqat::core::to_string(isa));
  EXPECT_EQ(names, (std::set<std::string>{"default", "avx2", "avx512"}));
}

// A table per variant: the one asked for where the CPU runs it, none otherwise.
TEST(CpuIsa, VariantForPicksTheTableOfTheInstructionSet) {
  static const int kDefaultTable = 0, kAvx2Table = 2, kAvx512Table = 5;
  static const int* const kTables[] = {&kDefaultTable, &kAvx2Table, &kAvx512Table};
  EXPECT_EQ(bitqat::core::variant_for(CpuIsa::kDefault, kTables), &kDefaultTable);
  EXPECT_EQ(bitqat::core::variant_for(CpuIsa::kAvx2, kTables),
            bitqat::core::cpu_runs(CpuIsa::kAvx2) ? &kAvx2Table : nullptr);
  EXPECT_EQ(bitqat::core::variant_for(CpuIsa::kAvx512, kTables),
            bitqat::core::cpu_runs(CpuIsa::kAvx512) ? &kAvx512Table : nullptr);
}

TEST(OnednnIsa, SetWhenUnsetAndLeftAloneOtherwise) {
  SavedEnv saved;
  ::unsetenv("ONEDNN_MAX_CPU_ISA");
  EXPECT_TRUE(bitqat::core::default_onednn_max_cpu_isa());
  ASSERT_NE(std::getenv("ONEDNN_MAX_CPU_ISA"), nullptr);
  EXPECT_STREQ(std::getenv("ONEDNN_MAX_CPU_ISA"), "AVX512_CORE_VNNI");
  ::setenv("ONEDNN_MAX_CPU_ISA", "ALL", 1);
  EXPECT_FALSE(bitqat::core::default_onednn_max_cpu_isa());
  EXPECT_STREQ(std::getenv("ONEDNN_MAX_CPU_ISA"), "ALL");
}
