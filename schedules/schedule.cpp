#include "schedules/schedule.hpp"

#include <fmt/format.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/schema.hpp"

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

constexpr int64_t kMaxStep = int64_t{1} << 40;

// The parameters of each kind. `train_steps` is not a key: the parse sets it before reading, for
// the defaults that follow train.steps.
struct ConstantP {
  double value = 0.0;
};
struct RampP {
  int64_t train_steps = 0;
  double from = 0.0, to = 1.0;
  int64_t start = 0, end = 0;
  double k = 0.0;
};
struct StepsP {
  std::vector<double> at, values;
  double from = 0.0;
};
struct WarmupDecayP {
  int64_t train_steps = 0;
  double peak = 1e-3;
  int64_t warmup_steps = 0;
  double min = 0.0;
  int64_t total = 0;
};
struct TwoStageLrP {
  int64_t train_steps = 0;
  double peak = 1.5e-3, second_peak = 0.0;
  int64_t warmup_steps = 0;
  double min_ratio = 0.1;
  int64_t switch_step = 0;
};
struct TwoStageWdP {
  int64_t train_steps = 0;
  double value = 0.1;
  int64_t switch_step = 0;
};

template <class P, class = void>
struct has_train_steps : std::false_type {};
template <class P>
struct has_train_steps<P, std::void_t<decltype(std::declval<P&>().train_steps)>> : std::true_type {};

// One kind of one role: its name, what it does, its keys and how its schedule is made.
struct Kind {
  const char* name;
  const char* meaning;
  std::function<std::unique_ptr<Schedule>(const core::Node& n, int64_t train_steps)> make;
  std::function<std::vector<core::KeyReference>(const std::string& prefix)> reference;
};

template <class P, class Build>
Kind kind(const char* name, const char* meaning, const core::Schema<P>& schema, Build build) {
  return {name, meaning,
          [&schema, build](const core::Node& n, int64_t train_steps) -> std::unique_ptr<Schedule> {
            P p{};
            if constexpr (has_train_steps<P>::value) p.train_steps = train_steps;
            schema.parse_into(n, &p, {"kind"});
            return build(p);
          },
          [&schema](const std::string& prefix) { return schema.reference(prefix); }};
}

core::KeyBuilder<ConstantP, double> constant_value(double fallback, double hi) {
  return core::key("value", &ConstantP::value, "the value at every step")
      .range(0.0, hi)
      .computed([fallback](const ConstantP&) { return fallback; }, fmt::format("{}", fallback));
}

const core::Schema<ConstantP>& lambda_constant() {
  static const core::Schema<ConstantP> s({constant_value(1.0, 1.0)});
  return s;
}
const core::Schema<ConstantP>& lr_constant() {
  static const core::Schema<ConstantP> s({constant_value(1e-3, 10.0)});
  return s;
}
const core::Schema<ConstantP>& wd_constant() {
  static const core::Schema<ConstantP> s({constant_value(0.0, 10.0)});
  return s;
}

// The keys of a lambda ramp; `k` with its default and range where the shape has one (k_default > 0).
std::unique_ptr<core::Schema<RampP>> make_ramp_schema(double k_default, double k_max) {
  using P = RampP;
  std::vector<core::Field<P>> fields = {
      core::key("from", &P::from, "lambda before start").range(0.0, 1.0),
      core::key("to", &P::to, "lambda from end on").range(0.0, 1.0),
      core::key("start", &P::start, "the step the ramp leaves from").range(int64_t{0}, kMaxStep),
      core::key("end", &P::end, "the step the ramp reaches to")
          .range(int64_t{0}, kMaxStep)
          .computed([](const P& p) { return p.train_steps; }, "train.steps"),
  };
  if (k_default > 0.0) {
    fields.push_back(core::key("k", &P::k, "the steepness of the shape")
                         .range(1e-3, k_max)
                         .computed([k_default](const P&) { return k_default; }, fmt::format("{}", k_default)));
  }
  return std::make_unique<core::Schema<P>>(std::move(fields), [](const core::Node& n, const P& p) {
    if (p.end <= p.start) {
      throw core::ConfigError(fmt::format("{}: expected a step after start = {}",
                                          describe_or_default(n, "end", p.end, "train.steps"), p.start));
    }
  });
}
const core::Schema<RampP>& ramp_schema() {
  static const auto s = make_ramp_schema(0.0, 0.0);
  return *s;
}
const core::Schema<RampP>& sigmoid_schema() {
  static const auto s = make_ramp_schema(20.0, 1000.0);
  return *s;
}
const core::Schema<RampP>& exponential_schema() {
  static const auto s = make_ramp_schema(6.0, 100.0);
  return *s;
}

const core::Schema<StepsP>& steps_schema() {
  using P = StepsP;
  static const core::Schema<P> s(
      {
          core::key("at", &P::at, "the steps at which lambda changes")
              .required()
              .check([](const std::vector<double>& at) { return !at.empty(); }, "a non-empty list of steps")
              .check(
                  [](const std::vector<double>& at) {
                    for (size_t i = 0; i < at.size(); ++i) {
                      if (at[i] < 0 || std::floor(at[i]) != at[i] || (i > 0 && at[i] <= at[i - 1])) return false;
                    }
                    return true;
                  },
                  "increasing whole step numbers >= 0"),
          core::key("values", &P::values, "lambda from each step of at on")
              .required()
              .check(
                  [](const std::vector<double>& v) {
                    return std::all_of(v.begin(), v.end(), [](double x) { return x >= 0.0 && x <= 1.0; });
                  },
                  "lambda values in [0, 1]"),
          core::key("from", &P::from, "lambda before at[0]").range(0.0, 1.0),
      },
      [](const core::Node& n, const P& p) {
        if (p.values.size() != p.at.size())
          n.fail("values", fmt::format("{} values, one per entry of at", p.at.size()));
      });
  return s;
}

const core::Schema<WarmupDecayP>& warmup_decay_schema() {
  using P = WarmupDecayP;
  static const core::Schema<P> s(
      {
          core::key("peak", &P::peak, "the learning rate at the end of the warm-up").range(1e-12, 10.0),
          core::key("warmup_steps", &P::warmup_steps, "steps of linear warm-up from peak / warmup_steps")
              .range(int64_t{0}, kMaxStep),
          core::key("min", &P::min, "the learning rate at total and after").range(0.0, 10.0),
          core::key("total", &P::total, "the step the decay ends at")
              .range(int64_t{1}, kMaxStep)
              .computed([](const P& p) { return p.train_steps; }, "train.steps"),
      },
      [](const core::Node& n, const P& p) {
        if (p.min > p.peak) n.fail("min", fmt::format("a value <= peak = {}", p.peak));
        if (p.warmup_steps > p.total) {
          if (n.has("total")) exceeds(n, "warmup_steps", p.warmup_steps, "0", n.key_path("total"), p.total);
          exceeds(n, "warmup_steps", p.warmup_steps, "0", "train.steps", p.total);
        }
      });
  return s;
}

const core::Schema<TwoStageLrP>& two_stage_lr_schema() {
  using P = TwoStageLrP;
  static const core::Schema<P> s(
      {
          core::key("peak", &P::peak, "the first stage's peak learning rate").range(1e-12, 10.0),
          core::key("second_peak", &P::second_peak, "the second stage's peak, at most peak")
              .range(0.0, 10.0)
              .computed([](const P& p) { return p.peak * 2.0 / 3.0; }, "2/3 of peak"),
          core::key("warmup_steps", &P::warmup_steps, "steps of linear warm-up to peak").range(int64_t{0}, kMaxStep),
          core::key("min_ratio", &P::min_ratio, "each stage decays linearly to its peak times this").range(0.0, 1.0),
          core::key("switch", &P::switch_step, "the step the second stage starts at")
              .range(int64_t{0}, kMaxStep)
              .computed([](const P& p) { return p.train_steps / 2; }, "train.steps / 2"),
      },
      [](const core::Node& n, const P& p) {
        if (p.second_peak > p.peak) {
          n.fail("second_peak", fmt::format("a value <= peak = {} (the second stage is lower)", p.peak));
        }
        if (p.warmup_steps > p.train_steps)
          exceeds(n, "warmup_steps", p.warmup_steps, "0", "train.steps", p.train_steps);
        if (p.switch_step > p.train_steps) {
          exceeds(n, "switch", p.switch_step, "train.steps / 2", "train.steps", p.train_steps);
        }
        if (p.switch_step <= p.warmup_steps) {
          throw core::ConfigError(fmt::format("{}: expected a step after warmup_steps = {}",
                                              describe_or_default(n, "switch", p.switch_step, "train.steps / 2"),
                                              p.warmup_steps));
        }
      });
  return s;
}

const core::Schema<TwoStageWdP>& two_stage_wd_schema() {
  using P = TwoStageWdP;
  static const core::Schema<P> s(
      {
          core::key("value", &P::value, "the weight decay before switch (0 from switch on)").range(0.0, 10.0),
          core::key("switch", &P::switch_step, "the step the weight decay drops to 0 at")
              .range(int64_t{0}, kMaxStep)
              .computed([](const P& p) { return p.train_steps / 2; }, "train.steps / 2"),
      },
      [](const core::Node& n, const P& p) {
        if (p.switch_step > p.train_steps) {
          exceeds(n, "switch", p.switch_step, "train.steps / 2", "train.steps", p.train_steps);
        }
      });
  return s;
}

std::unique_ptr<Schedule> ramp(Shape shape, const RampP& p) {
  return std::make_unique<Ramp>(shape, p.k, p.start, p.end, p.from, p.to);
}

// The kinds of each role.
const std::vector<Kind>& kinds(ScheduleRole role) {
  static const std::vector<Kind> lambda = {
      kind("constant", "lambda = value at every step", lambda_constant(),
           [](const ConstantP& p) { return std::make_unique<Constant>(p.value); }),
      kind("linear", "from -> to linearly over [start, end)", ramp_schema(),
           [](const RampP& p) { return ramp(Shape::kLinear, p); }),
      kind("cosine", "from -> to along a half cosine over [start, end)", ramp_schema(),
           [](const RampP& p) { return ramp(Shape::kCosine, p); }),
      kind("sigmoid", "from -> to along the logistic of k (t - 1/2), rescaled to meet both ends", sigmoid_schema(),
           [](const RampP& p) { return ramp(Shape::kSigmoid, p); }),
      kind("exponential", "from -> to along expm1(k t) / expm1(k)", exponential_schema(),
           [](const RampP& p) { return ramp(Shape::kExponential, p); }),
      kind("steps", "values[i] from step at[i] on, from before at[0]", steps_schema(),
           [](const StepsP& p) {
             std::vector<int64_t> at(p.at.begin(), p.at.end());
             return std::make_unique<Steps>(at, p.values, p.from);
           }),
  };
  static const std::vector<Kind> lr = {
      kind("constant", "the learning rate = value at every step", lr_constant(),
           [](const ConstantP& p) { return std::make_unique<Constant>(p.value); }),
      kind("warmup_cosine", "linear warm-up to peak, cosine decay to min at total", warmup_decay_schema(),
           [](const WarmupDecayP& p) {
             return std::make_unique<WarmupDecay>(true, p.peak, p.warmup_steps, p.min, p.total);
           }),
      kind("warmup_linear", "linear warm-up to peak, linear decay to min at total", warmup_decay_schema(),
           [](const WarmupDecayP& p) {
             return std::make_unique<WarmupDecay>(false, p.peak, p.warmup_steps, p.min, p.total);
           }),
      kind("two_stage",
           "BitNet b1.58's recipe: warm-up, linear decay to peak * min_ratio at switch, then second_peak decaying "
           "to second_peak * min_ratio at train.steps",
           two_stage_lr_schema(),
           [](const TwoStageLrP& p) {
             return std::make_unique<TwoStageLR>(p.peak, p.second_peak, p.warmup_steps, p.min_ratio, p.switch_step,
                                                 p.train_steps);
           }),
  };
  static const std::vector<Kind> wd = {
      kind("constant", "the weight decay = value at every step", wd_constant(),
           [](const ConstantP& p) { return std::make_unique<Constant>(p.value); }),
      kind("two_stage", "BitNet b1.58's recipe: value, then 0 from switch on", two_stage_wd_schema(),
           [](const TwoStageWdP& p) { return std::make_unique<TwoStageWD>(p.value, p.switch_step); }),
  };
  switch (role) {
    case ScheduleRole::kLambda:
      return lambda;
    case ScheduleRole::kLearningRate:
      return lr;
    case ScheduleRole::kWeightDecay:
      return wd;
  }
  throw std::logic_error("unknown schedule role");
}

std::string kind_choices(ScheduleRole role) {
  std::vector<std::string> names;
  for (const auto& k : kinds(role)) names.emplace_back(k.name);
  std::sort(names.begin(), names.end());
  return fmt::format("{}", fmt::join(names, "|"));
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
  const auto name = node.get<std::string>("kind", "");
  for (const auto& k : kinds(role)) {
    if (name == k.name) return k.make(node, total_steps);
  }
  node.fail("kind", "one of " + kind_choices(role));
}

std::vector<core::KeyReference> schedule_reference(ScheduleRole role, const std::string& key) {
  std::vector<core::KeyReference> rows;
  rows.push_back({key + ".kind", "one of", "(required)", kind_choices(role), fmt::format("the shape of {}", role_name(role)), ""});
  for (const auto& k : kinds(role)) {
    rows.push_back({key + ".kind", "", "", k.name, k.meaning, fmt::format("kind: {}", k.name)});
    for (auto& r : k.reference(key + ".")) {
      r.when = fmt::format("kind: {}", k.name);
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

}  // namespace bitqat::schedules
