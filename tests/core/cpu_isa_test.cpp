// core/cpu_isa.hpp: the oneDNN instruction-set default is set only where the user left it unset.
#include "core/cpu_isa.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

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

}  // namespace

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
