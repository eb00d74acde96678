// Schedules of the training recipe (quantization ramp lambda, learning rate, weight decay) as pure
// functions of the optimizer step, so that resuming needs only the step. One factory from YAML.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/schema.hpp"

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
//   sigmoid: logistic of k (t - 1/2), t in [0, 1], rescaled to be exactly `from` at start and `to`
//   at end (k in [0.001, 1000], default 20); exponential: expm1(k t) / expm1(k) (k in [0.001, 100],
//   default 6). `steps` holds values[i] from step at[i] on (`from` before at[0]).
// Learning rate (warm-up is linear, peak * (step + 1) / warmup_steps, so that step 0 already moves
// and step warmup_steps - 1 reaches the peak):
//   constant {value} | warmup_cosine {peak, warmup_steps (0), min (0), total (total_steps)}
//   | warmup_linear {same keys}: decay from peak at warmup_steps to min at total, min after.
//   | two_stage {peak, second_peak (2/3 of peak), warmup_steps (0), min_ratio (0.1), switch (total/2)}:
//     BitNet's recipe. Warm-up to peak, LINEAR decay to peak * min_ratio at the switch, then a jump
//     down to second_peak (<= peak) and a linear decay to second_peak * min_ratio at total_steps.
//     The floor is a ratio (not an absolute `min`) because it applies to both stages' peaks.
// Weight decay: constant {value} | two_stage {value (0.1), switch (total/2)}: value, then 0 from switch.
std::unique_ptr<Schedule> make_schedule(const core::Node& node, ScheduleRole role, int64_t total_steps);

// The config reference of a schedule at `key` ("optim.lr"): its kind, then each kind's keys (their
// KeyReference::when says which kind), from the same declarations make_schedule parses with.
std::vector<core::KeyReference> schedule_reference(ScheduleRole role, const std::string& key);

}  // namespace bitqat::schedules
