// The training loop: config -> data, model, optimizer, schedules -> steps with gradient
// accumulation, clipping, non-finite step handling, evaluation, metrics and crash-safe checkpoints
// that resume exactly. Data-parallel when launched with several ranks.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>

#include "training/config.hpp"
#include "training/distributed.hpp"

namespace bitqat::training {

struct TrainOptions {
  bool resume = false;
  // Test hook: may replace the loss of (step, micro) before backward (e.g. with NaN).
  std::function<void(int64_t step, int micro, at::Tensor& loss)> loss_hook;
  // Test hook: called after each optimizer step (or skipped step) with the step just finished.
  std::function<void(int64_t step)> after_step;
  // Test hook: called once the run is set up (model, optimizer state, shards), before its first step.
  std::function<void()> after_setup;
};

struct TrainResult {
  std::string run_dir;
  int64_t start_step = 0;
  int64_t final_step = 0;
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  int64_t skipped_steps = 0;
  // The collectives this rank issued inside the optimizer steps of this run (the set-up's broadcasts,
  // evaluations and checkpoints left out), summed over `final_step - start_step` steps; empty without a
  // process group.
  CollectiveBytes step_collectives;
  // Resumed at train.steps already: nothing was trained, read (beyond the checkpoint's manifest and
  // state) or written.
  bool nothing_to_train = false;
};

TrainResult train(const Config& cfg, const TrainOptions& options = {});

}  // namespace bitqat::training
