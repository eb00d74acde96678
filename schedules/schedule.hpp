// Schedules of the training recipe (quantization ramp lambda, learning rate, weight decay) as pure
// functions of the optimizer step, so that resuming needs only the step. One factory from YAML.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/config.hpp"

namespace bitqat::schedules {

class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual double at(int64_t step) const = 0;  // value at optimizer step `step` (0-based)
  virtual std::string describe() const = 0;   // one line for the log
};

enum class ScheduleRole { kLambda, kLearningRate, kWeightDecay };

// Builds a schedule from a mapping with a `kind` key; `total_steps` is train.steps (the default end
// of ramps and decays). Bad kinds, parameters and cross-field conflicts are ConfigErrors naming the
// key path and value.
//
// Lambda ramps (values in [0, 1]); `from` (default 0) before `start` (default 0), `to` (default 1)
// from `end` (default total_steps) on:
//   constant {value} | linear | cosine | sigmoid {k} | exponential {k} | steps {at: [...], values: [...]}
// Learning rate: constant {value} | warmup_cosine {peak, warmup_steps, min, total}
//   | warmup_linear {peak, warmup_steps, min, total}
//   | two_stage {peak, second_peak, warmup_steps, min_ratio, switch}
// Weight decay: constant {value} | two_stage {value, switch}
std::unique_ptr<Schedule> make_schedule(const core::Node& node, ScheduleRole role, int64_t total_steps);

}  // namespace bitqat::schedules
