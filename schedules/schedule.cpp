#include "schedules/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace bitqat::schedules {
namespace {

constexpr double kPi = 3.14159265358979323846;

class Constant final : public Schedule {
 public:
  explicit Constant(double v) : v_(v) {}
  double at(int64_t) const override { return v_; }
  std::string describe() const override { return fmt::format("constant {}", v_); }

 private:
  double v_;
};

enum class Shape { kLinear, kCosine, kSigmoid, kExponential };

// from -> to over [start, end), shaped by a unit ramp r(t), t in [0,1], r(0)=0, r(1)=1.
class Ramp final : public Schedule {
 public:
  Ramp(Shape shape, double k, int64_t start, int64_t end, double from, double to)
      : shape_(shape), k_(k), start_(start), end_(end), from_(from), to_(to) {}
  double at(int64_t step) const override {
    if (step < start_) return from_;
    if (step >= end_) return to_;
    const double t = static_cast<double>(step - start_) / static_cast<double>(end_ - start_);
    return from_ + (to_ - from_) * unit(t);
  }
  std::string describe() const override {
    static const char* names[] = {"linear", "cosine", "sigmoid", "exponential"};
    return fmt::format("{}{} {}->{} over steps [{}, {})", names[static_cast<int>(shape_)],
                       shape_ == Shape::kSigmoid || shape_ == Shape::kExponential ? fmt::format("(k={})", k_) : "",
                       from_, to_, start_, end_);
  }

 private:
  double unit(double t) const {
    switch (shape_) {
      case Shape::kLinear:
        return t;
      case Shape::kCosine:
        return 0.5 * (1.0 - std::cos(kPi * t));
      case Shape::kSigmoid: {
        // Logistic of k (t - 1/2), rescaled so that it is exactly 0 at t=0 and 1 at t=1.
        auto s = [this](double x) { return 1.0 / (1.0 + std::exp(-k_ * (x - 0.5))); };
        return (s(t) - s(0.0)) / (s(1.0) - s(0.0));
      }
      case Shape::kExponential:
        return std::expm1(k_ * t) / std::expm1(k_);
    }
    return t;
  }
  Shape shape_;
  double k_;
  int64_t start_, end_;
  double from_, to_;
};

// Piecewise constant: values[i] from at[i] on; `from` before at[0].
class Steps final : public Schedule {
 public:
  Steps(std::vector<int64_t> at, std::vector<double> values, double from)
      : at_(std::move(at)), values_(std::move(values)), from_(from) {}
  double at(int64_t step) const override {
    double v = from_;
    for (size_t i = 0; i < at_.size() && step >= at_[i]; ++i) v = values_[i];
    return v;
  }
  std::string describe() const override {
    std::string s = fmt::format("steps {}", from_);
    for (size_t i = 0; i < at_.size(); ++i) s += fmt::format(", {}@{}", values_[i], at_[i]);
    return s;
  }

 private:
  std::vector<int64_t> at_;
  std::vector<double> values_;
  double from_;
};

// Linear warm-up 0 -> peak over [0, warmup), then cosine or linear decay to `min` at `total`.
class WarmupDecay final : public Schedule {
 public:
  WarmupDecay(bool cosine, double peak, int64_t warmup, double min, int64_t total)
      : cosine_(cosine), peak_(peak), warmup_(warmup), min_(min), total_(total) {}
  double at(int64_t step) const override {
    if (step < warmup_) return peak_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
    if (step >= total_) return min_;
    const double t = static_cast<double>(step - warmup_) / static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
    const double f = cosine_ ? 0.5 * (1.0 + std::cos(kPi * t)) : 1.0 - t;
    return min_ + (peak_ - min_) * f;
  }
  std::string describe() const override {
    return fmt::format("warm-up {} steps to {}, {} decay to {} at step {}", warmup_, peak_,
                       cosine_ ? "cosine" : "linear", min_, total_);
  }

 private:
  bool cosine_;
  double peak_;
  int64_t warmup_;
  double min_;
  int64_t total_;
};

// BitNet's two-stage schedule: warm-up to `peak`, linear decay within stage 1 to peak*min_ratio; at
// `switch` the rate jumps to the lower `second_peak` and decays linearly to second_peak*min_ratio
// at the end of the run.
class TwoStageLR final : public Schedule {
 public:
  TwoStageLR(double peak, double second, int64_t warmup, double min_ratio, int64_t sw, int64_t total)
      : peak_(peak), second_(second), warmup_(warmup), min_ratio_(min_ratio), switch_(sw), total_(total) {}
  double at(int64_t step) const override {
    if (step < warmup_) return peak_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
    if (step < switch_) return decay(peak_, step - warmup_, switch_ - warmup_);
    if (step >= total_) return second_ * min_ratio_;
    return decay(second_, step - switch_, total_ - switch_);
  }
  std::string describe() const override {
    return fmt::format(
        "two-stage: warm-up {} steps to {}, linear decay, switch at step {} to {}, decay to {} of "
        "each peak",
        warmup_, peak_, switch_, second_, min_ratio_);
  }

 private:
  double decay(double peak, int64_t i, int64_t n) const {
    const double t = static_cast<double>(i) / static_cast<double>(std::max<int64_t>(1, n));
    return peak * (1.0 - (1.0 - min_ratio_) * t);
  }
  double peak_, second_;
  int64_t warmup_;
  double min_ratio_;
  int64_t switch_, total_;
};

class TwoStageWD final : public Schedule {
 public:
  TwoStageWD(double v, int64_t sw) : v_(v), switch_(sw) {}
  double at(int64_t step) const override { return step < switch_ ? v_ : 0.0; }
  std::string describe() const override { return fmt::format("two-stage {} then 0 from step {}", v_, switch_); }

 private:
  double v_;
  int64_t switch_;
};

const char* role_name(ScheduleRole r) {
  switch (r) {
    case ScheduleRole::kLambda:
      return "a lambda schedule";
    case ScheduleRole::kLearningRate:
      return "a learning-rate schedule";
    case ScheduleRole::kWeightDecay:
      return "a weight-decay schedule";
  }
  return "";
}

// "where = value" for a key that may be absent, in which case the default is named.
std::string describe_or_default(const core::Node& n, const std::string& key, int64_t v, const std::string& dflt) {
  if (n.has(key)) return n.describe(key);
  return fmt::format("{} = {} (the default, {})", n.where(key), v, dflt);
}

// `limit_name` is what bounds the value: train.steps, or the schedule's own `total` key.
[[noreturn]] void exceeds(const core::Node& n, const std::string& key, int64_t v, const std::string& dflt,
                          const std::string& limit_name, int64_t limit) {
  throw core::ConfigError(fmt::format("{} exceeds {} = {}", describe_or_default(n, key, v, dflt), limit_name, limit));
}

std::unique_ptr<Schedule> make_lambda(const core::Node& n, const std::string& kind, int64_t total) {
  const double from = n.get_in<double>("from", 0.0, 0.0, 1.0);
  const double to = n.get_in<double>("to", 1.0, 0.0, 1.0);
  if (kind == "constant") {
    n.allow_only({"kind", "value"});
    return std::make_unique<Constant>(n.get_in<double>("value", 1.0, 0.0, 1.0));
  }
  if (kind == "steps") {
    n.allow_only({"kind", "at", "values", "from"});
    const auto at = n.get_doubles("at");
    const auto values = n.get_doubles("values");
    if (at.empty()) n.fail("at", "a non-empty list of steps");
    if (values.size() != at.size()) n.fail("values", fmt::format("{} values, one per entry of at", at.size()));
    std::vector<int64_t> at_i;
    for (size_t i = 0; i < at.size(); ++i) {
      if (at[i] < 0 || std::floor(at[i]) != at[i] || (i > 0 && at[i] <= at[i - 1])) {
        n.fail("at", "increasing whole step numbers >= 0");
      }
      if (values[i] < 0.0 || values[i] > 1.0) n.fail("values", "lambda values in [0, 1]");
      at_i.push_back(static_cast<int64_t>(at[i]));
    }
    return std::make_unique<Steps>(at_i, values, from);
  }
  Shape shape;
  double k = 0.0;
  if (kind == "linear") {
    shape = Shape::kLinear;
    n.allow_only({"kind", "start", "end", "from", "to"});
  } else if (kind == "cosine") {
    shape = Shape::kCosine;
    n.allow_only({"kind", "start", "end", "from", "to"});
  } else if (kind == "sigmoid") {
    shape = Shape::kSigmoid;
    n.allow_only({"kind", "start", "end", "from", "to", "k"});
    k = n.get_in<double>("k", 20.0, 1e-3, 1000.0);
  } else if (kind == "exponential") {
    shape = Shape::kExponential;
    n.allow_only({"kind", "start", "end", "from", "to", "k"});
    k = n.get_in<double>("k", 6.0, 1e-3, 100.0);
  } else {
    n.fail("kind", "one of constant|cosine|exponential|linear|sigmoid|steps");
  }
  const int64_t start = n.get_in<int64_t>("start", 0, 0, int64_t{1} << 40);
  const int64_t end = n.get_in<int64_t>("end", total, 0, int64_t{1} << 40);
  if (end <= start) {
    throw core::ConfigError(
        fmt::format("{}: expected a step after start = {}", describe_or_default(n, "end", end, "train.steps"), start));
  }
  return std::make_unique<Ramp>(shape, k, start, end, from, to);
}

std::unique_ptr<Schedule> make_lr(const core::Node& n, const std::string& kind, int64_t total) {
  if (kind == "constant") {
    n.allow_only({"kind", "value"});
    return std::make_unique<Constant>(n.get_in<double>("value", 1e-3, 0.0, 10.0));
  }
  if (kind == "warmup_cosine" || kind == "warmup_linear") {
    n.allow_only({"kind", "peak", "warmup_steps", "min", "total"});
    const double peak = n.get_in<double>("peak", 1e-3, 1e-12, 10.0);
    const int64_t warmup = n.get_in<int64_t>("warmup_steps", 0, 0, int64_t{1} << 40);
    const double min = n.get_in<double>("min", 0.0, 0.0, 10.0);
    const int64_t end = n.get_in<int64_t>("total", total, 1, int64_t{1} << 40);
    if (min > peak) n.fail("min", fmt::format("a value <= peak = {}", peak));
    if (warmup > end) {
      if (n.has("total")) exceeds(n, "warmup_steps", warmup, "0", n.key_path("total"), end);
      exceeds(n, "warmup_steps", warmup, "0", "train.steps", end);
    }
    return std::make_unique<WarmupDecay>(kind == "warmup_cosine", peak, warmup, min, end);
  }
  if (kind == "two_stage") {
    n.allow_only({"kind", "peak", "second_peak", "warmup_steps", "min_ratio", "switch"});
    const double peak = n.get_in<double>("peak", 1.5e-3, 1e-12, 10.0);
    const double second = n.get_in<double>("second_peak", peak * 2.0 / 3.0, 0.0, 10.0);
    if (second > peak) n.fail("second_peak", fmt::format("a value <= peak = {} (the second stage is lower)", peak));
    const int64_t warmup = n.get_in<int64_t>("warmup_steps", 0, 0, int64_t{1} << 40);
    const double min_ratio = n.get_in<double>("min_ratio", 0.1, 0.0, 1.0);
    const int64_t sw = n.get_in<int64_t>("switch", total / 2, 0, int64_t{1} << 40);
    if (warmup > total) exceeds(n, "warmup_steps", warmup, "0", "train.steps", total);
    if (sw > total) exceeds(n, "switch", sw, "train.steps / 2", "train.steps", total);
    if (sw <= warmup) {
      throw core::ConfigError(fmt::format("{}: expected a step after warmup_steps = {}",
                                          describe_or_default(n, "switch", sw, "train.steps / 2"), warmup));
    }
    return std::make_unique<TwoStageLR>(peak, second, warmup, min_ratio, sw, total);
  }
  n.fail("kind", "one of constant|two_stage|warmup_cosine|warmup_linear");
}

std::unique_ptr<Schedule> make_wd(const core::Node& n, const std::string& kind, int64_t total) {
  if (kind == "constant") {
    n.allow_only({"kind", "value"});
    return std::make_unique<Constant>(n.get_in<double>("value", 0.0, 0.0, 10.0));
  }
  if (kind == "two_stage") {
    n.allow_only({"kind", "value", "switch"});
    const double v = n.get_in<double>("value", 0.1, 0.0, 10.0);
    const int64_t sw = n.get_in<int64_t>("switch", total / 2, 0, int64_t{1} << 40);
    if (sw > total) exceeds(n, "switch", sw, "train.steps / 2", "train.steps", total);
    return std::make_unique<TwoStageWD>(v, sw);
  }
  n.fail("kind", "one of constant|two_stage");
}

}  // namespace

std::unique_ptr<Schedule> make_schedule(const core::Node& node, ScheduleRole role, int64_t total_steps) {
  if (!node.defined() || !node.yaml().IsMap()) {
    throw core::ConfigError(
        fmt::format("{}: expected {} as a mapping with a kind key, e.g. {{kind: constant, "
                    "value: 1.0}}",
                    node.where(), role_name(role)));
  }
  if (!node.has("kind")) {
    throw core::ConfigError(fmt::format("{}: {} needs a kind key", node.where(), role_name(role)));
  }
  const auto kind = node.get<std::string>("kind", "");
  switch (role) {
    case ScheduleRole::kLambda:
      return make_lambda(node, kind, total_steps);
    case ScheduleRole::kLearningRate:
      return make_lr(node, kind, total_steps);
    case ScheduleRole::kWeightDecay:
      return make_wd(node, kind, total_steps);
  }
  throw std::logic_error("unknown schedule role");
}

}  // namespace bitqat::schedules
