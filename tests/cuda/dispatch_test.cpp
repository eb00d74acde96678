// The kernel dispatch (cuda/dispatch.hpp): today's kernels without measurements; a measured row by
// device, M range and the nearest N x K; the per-group column; unknown names and plans that cannot
// serve fall back; every row of the checked-in table names real kernels.
#include "cuda/dispatch.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace bitqat::cuda;

TEST(Dispatch, DefaultIsTodaysKernels) {
  EXPECT_EQ(default_plan(1).kernel, Kernel::kGemvColumn);
  EXPECT_EQ(default_plan(16).kernel, Kernel::kGemvColumn);
  EXPECT_EQ(default_plan(17).kernel, Kernel::kMma);
  EXPECT_EQ(choose_plan("Some GPU", 5, 64, 64, ScaleKind::kPerTensor, {}).kernel, Kernel::kGemvColumn);
}

TEST(Dispatch, RowsByDeviceRangeNearestShapeAndScaleKind) {
  const std::vector<DispatchRow> table = {
      {"GPU A", 1, 1, 4096, 4096, "gemv_fused", 4, "gemv_fused", 4},
      {"GPU A", 2, 16, 4096, 4096, "cublas_int8", 1, "gemv_tiled", 2},
      {"GPU A", 2, 16, 14336, 4096, "gemv_tiled", 8, "gemv_tiled", 8},
      {"GPU A", 17, int64_t{1} << 62, 4096, 4096, "mma_pipelined", 1, "mma_pipelined", 1},
      {"GPU B", 1, 16, 4096, 4096, "no_such_kernel", 1, "gemv_tiled", 1},
      {"GPU B", 17, 64, 4096, 4096, "gemv_tiled", 1, "gemv_tiled", 1},  // cannot serve M > 16
  };
  auto pick = [&](const char* dev, int64_t m, int64_t n, int64_t k, ScaleKind kind) {
    return choose_plan(dev, m, n, k, kind, table);
  };
  EXPECT_EQ(pick("GPU A", 1, 4096, 4096, ScaleKind::kPerTensor).kernel, Kernel::kGemvFused);
  EXPECT_EQ(pick("GPU A", 1, 4096, 4096, ScaleKind::kPerTensor).splits, 4);
  EXPECT_EQ(pick("GPU A", 8, 4096, 4096, ScaleKind::kPerChannel).kernel, Kernel::kCublasInt8);
  EXPECT_EQ(pick("GPU A", 8, 4096, 4096, ScaleKind::kPerGroup).kernel, Kernel::kGemvTiled);
  // The nearest N x K: 12288 x 4096 is nearer 14336 x 4096 than 4096 x 4096.
  const auto near = pick("GPU A", 8, 12288, 4096, ScaleKind::kPerTensor);
  EXPECT_EQ(near.kernel, Kernel::kGemvTiled);
  EXPECT_EQ(near.splits, 8);
  EXPECT_EQ(pick("GPU A", 100000, 4096, 4096, ScaleKind::kPerTensor).kernel, Kernel::kMmaPipelined);
  EXPECT_EQ(pick("GPU B", 3, 4096, 4096, ScaleKind::kPerTensor).kernel, Kernel::kGemvColumn);  // unknown name
  EXPECT_EQ(pick("GPU B", 3, 4096, 4096, ScaleKind::kPerGroup).kernel, Kernel::kGemvTiled);
  EXPECT_EQ(pick("GPU B", 40, 4096, 4096, ScaleKind::kPerTensor).kernel, Kernel::kMma);  // cannot serve: default
  EXPECT_EQ(pick("GPU C", 40, 4096, 4096, ScaleKind::kPerTensor).kernel, Kernel::kMma);  // no rows
}

TEST(Dispatch, TheCheckedInTableNamesRealKernels) {
  for (const auto& r : dispatch_table()) {
    Kernel k;
    EXPECT_TRUE(kernel_from_name(r.best, &k)) << r.best;
    EXPECT_TRUE(kernel_from_name(r.per_group, &k)) << r.per_group;
    EXPECT_GE(r.best_splits, 1);
    EXPECT_LE(r.m_lo, r.m_hi);
  }
  Kernel k;
  EXPECT_FALSE(kernel_from_name("mma_large", &k));
  EXPECT_TRUE(kernel_from_name("mma_small", &k));
  EXPECT_EQ(k, Kernel::kMmaSmall);
}
