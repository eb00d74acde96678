// The flow-matching task (training/task.cpp, model.kind dit): a global batch has the same loss
// however it is split over ranks (per-sample noise, times and dropped labels come from the sample's
// global id), and the held-out loss is the same every time it is measured.
#include "training/task.hpp"

#include <gtest/gtest.h>

#include "data/source.hpp"
#include "tests/training/tiny_runs.hpp"

using bitqat::training::Config;

namespace {

Config dit_config(const std::string& extra = "") {
  return Config::load_string(bitqat::testing::tiny_dit_yaml("/tmp/unused", "t", 1) + extra, "t.yaml");
}

}  // namespace

// 8 samples as one batch, and as rank 0 and rank 1 of two (rows 0-3 and 4-7 of the same global
// batch): every sample has 784 values, so the batch mean is the mean of the halves' means (float32
// sums in another order: relative 1e-6).
TEST(FlowMatchingTask, LossDoesNotDependOnTheSplit) {
  const auto cfg = dit_config();
  at::manual_seed(1);
  auto task = bitqat::training::make_task(cfg, at::Device(at::kCPU));
  {
    at::NoGradGuard g;
    for (auto& p : task->module().parameters()) p.normal_(0.0, 0.2);  // a non-trivial velocity
  }
  const auto src = bitqat::data::make_source(cfg.data, cfg.run.seed);
  const auto whole = src->train_batch(3, 0, 0, 1, 8, 1);
  const auto r0 = src->train_batch(3, 0, 0, 2, 4, 1);
  const auto r1 = src->train_batch(3, 0, 1, 2, 4, 1);
  EXPECT_TRUE(at::cat({r0.rows, r1.rows}).equal(whole.rows));
  EXPECT_TRUE(whole.rows.equal(at::arange(24, 32, at::kLong)));  // step 3 of a global batch of 8
  at::NoGradGuard g;
  const double l = task->loss(whole).item<double>();
  const double l0 = task->loss(r0).item<double>(), l1 = task->loss(r1).item<double>();
  EXPECT_NEAR(l, (l0 + l1) / 2, 1e-6 * l);
  EXPECT_GT(l, 0.1);
  EXPECT_EQ(task->units(whole), 8);
  EXPECT_STREQ(task->unit_name(), "samples");
  // Another step draws other noise and times for the same images.
  auto again = whole;
  again.rows = whole.rows + 8;
  EXPECT_NE(task->loss(again).item<double>(), l);
}

TEST(FlowMatchingTask, HeldOutLossIsFixed) {
  const auto cfg = dit_config();
  at::manual_seed(2);
  auto task = bitqat::training::make_task(cfg, at::Device(at::kCPU));
  {
    at::NoGradGuard g;
    for (auto& p : task->module().parameters()) p.normal_(0.0, 0.2);
  }
  const auto src = bitqat::data::make_source(cfg.data, cfg.run.seed, bitqat::data::Split::kValidation);
  const auto val = src->val_batches(8, 2);
  const auto a = task->evaluate(val, at::Device(at::kCPU));
  const auto b = task->evaluate(val, at::Device(at::kCPU));
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_TRUE(a.metric_name.empty());
  EXPECT_TRUE(task->module().is_training());
  // A batch without sample ids is a programming error, not a silent fallback.
  auto no_rows = val[0];
  no_rows.rows = at::Tensor();
  EXPECT_THROW(task->loss(no_rows), std::logic_error);
}
