#include "schedules/schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"

using bitqat::core::Node;
using bitqat::schedules::make_schedule;
using bitqat::schedules::ScheduleRole;

namespace {

std::unique_ptr<bitqat::schedules::Schedule> make(const std::string& yaml, ScheduleRole role, int64_t total = 100) {
  return make_schedule(Node::load_string(yaml, "s.yaml"), role, total);
}

std::string error_of(const std::string& yaml, ScheduleRole role, int64_t total = 100) {
  try {
    make(yaml, role, total);
  } catch (const bitqat::core::ConfigError& e) {
    return e.what();
  }
  return "";
}

constexpr double kPi = 3.14159265358979323846;

}  // namespace

TEST(LambdaRamps, LinearAndCosineEndpointsAndMidpoints) {
  const auto lin = make("kind: linear\nstart: 10\nend: 30\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(lin->at(0), 0.0);
  EXPECT_DOUBLE_EQ(lin->at(10), 0.0);
  EXPECT_DOUBLE_EQ(lin->at(15), 0.25);
  EXPECT_DOUBLE_EQ(lin->at(20), 0.5);
  EXPECT_DOUBLE_EQ(lin->at(30), 1.0);
  EXPECT_DOUBLE_EQ(lin->at(1000), 1.0);
  const auto cos = make("kind: cosine\nend: 40\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(cos->at(0), 0.0);
  EXPECT_NEAR(cos->at(10), 0.5 * (1 - std::cos(kPi * 0.25)), 1e-15);
  EXPECT_NEAR(cos->at(20), 0.5, 1e-15);
  EXPECT_DOUBLE_EQ(cos->at(40), 1.0);
  // Default end = total steps; from/to.
  const auto d = make("kind: linear\nfrom: 0.2\nto: 0.6\n", ScheduleRole::kLambda, 50);
  EXPECT_DOUBLE_EQ(d->at(0), 0.2);
  EXPECT_NEAR(d->at(25), 0.4, 1e-15);
  EXPECT_DOUBLE_EQ(d->at(50), 0.6);
}

TEST(LambdaRamps, SigmoidAndExponentialAreNormalisedAndMonotone) {
  const auto sig = make("kind: sigmoid\nk: 20\nend: 100\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(sig->at(0), 0.0);
  EXPECT_NEAR(sig->at(50), 0.5, 1e-12);  // symmetric around the midpoint
  EXPECT_DOUBLE_EQ(sig->at(100), 1.0);
  const double s = 1.0 / (1.0 + std::exp(-20.0 * (0.25 - 0.5)));
  const double s0 = 1.0 / (1.0 + std::exp(10.0));
  const double s1 = 1.0 / (1.0 + std::exp(-10.0));
  EXPECT_NEAR(sig->at(25), (s - s0) / (s1 - s0), 1e-12);
  const auto ex = make("kind: exponential\nk: 6\nend: 100\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(ex->at(0), 0.0);
  EXPECT_NEAR(ex->at(50), std::expm1(3.0) / std::expm1(6.0), 1e-12);
  EXPECT_DOUBLE_EQ(ex->at(100), 1.0);
  for (int64_t t = 1; t <= 100; ++t) {
    EXPECT_GE(sig->at(t), sig->at(t - 1));
    EXPECT_GE(ex->at(t), ex->at(t - 1));
  }
}

TEST(LambdaRamps, ConstantAndSteps) {
  EXPECT_DOUBLE_EQ(make("kind: constant\nvalue: 0.3\n", ScheduleRole::kLambda)->at(77), 0.3);
  const auto st = make("kind: steps\nat: [10, 20]\nvalues: [0.25, 1.0]\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(st->at(9), 0.0);
  EXPECT_DOUBLE_EQ(st->at(10), 0.25);
  EXPECT_DOUBLE_EQ(st->at(19), 0.25);
  EXPECT_DOUBLE_EQ(st->at(20), 1.0);
  EXPECT_DOUBLE_EQ(st->at(500), 1.0);
}

TEST(LearningRate, WarmupCosineAndLinear) {
  const auto c = make("kind: warmup_cosine\npeak: 0.01\nwarmup_steps: 10\nmin: 0.001\n", ScheduleRole::kLearningRate);
  EXPECT_DOUBLE_EQ(c->at(0), 0.001);  // (0+1)/10 of the peak
  EXPECT_DOUBLE_EQ(c->at(9), 0.01);
  EXPECT_DOUBLE_EQ(c->at(10), 0.01);
  EXPECT_NEAR(c->at(55), 0.001 + 0.009 * 0.5, 1e-15);  // halfway through the decay
  EXPECT_DOUBLE_EQ(c->at(100), 0.001);
  EXPECT_DOUBLE_EQ(c->at(1000), 0.001);
  const auto l = make("kind: warmup_linear\npeak: 0.01\nwarmup_steps: 0\n", ScheduleRole::kLearningRate);
  EXPECT_DOUBLE_EQ(l->at(0), 0.01);
  EXPECT_NEAR(l->at(25), 0.0075, 1e-15);
  EXPECT_DOUBLE_EQ(l->at(100), 0.0);
  EXPECT_DOUBLE_EQ(make("kind: constant\nvalue: 0.002\n", ScheduleRole::kLearningRate)->at(3), 0.002);
}

TEST(LearningRate, BitNetTwoStage) {
  const auto s = make("kind: two_stage\npeak: 1.5e-3\nsecond_peak: 1.0e-3\nwarmup_steps: 10\nmin_ratio: 0.1\n",
                      ScheduleRole::kLearningRate);
  EXPECT_DOUBLE_EQ(s->at(4), 1.5e-3 * 5 / 10);
  EXPECT_DOUBLE_EQ(s->at(10), 1.5e-3);                          // start of stage-1 decay
  EXPECT_NEAR(s->at(30), 1.5e-3 * (1 - 0.9 * 0.5), 1e-15);      // halfway through stage 1 (10..50)
  EXPECT_NEAR(s->at(49), 1.5e-3 * (1 - 0.9 * 39.0 / 40), 1e-15);
  EXPECT_DOUBLE_EQ(s->at(50), 1.0e-3);                          // the switch: a lower second peak
  EXPECT_NEAR(s->at(75), 1.0e-3 * (1 - 0.9 * 0.5), 1e-15);
  EXPECT_NEAR(s->at(100), 1.0e-4, 1e-15);
  EXPECT_NEAR(s->at(200), 1.0e-4, 1e-15);
}

TEST(WeightDecay, ConstantAndTwoStage) {
  const auto s = make("kind: two_stage\nvalue: 0.1\n", ScheduleRole::kWeightDecay);
  EXPECT_DOUBLE_EQ(s->at(0), 0.1);
  EXPECT_DOUBLE_EQ(s->at(49), 0.1);
  EXPECT_DOUBLE_EQ(s->at(50), 0.0);
  EXPECT_DOUBLE_EQ(s->at(99), 0.0);
  EXPECT_DOUBLE_EQ(make("kind: two_stage\nvalue: 0.05\nswitch: 80\n", ScheduleRole::kWeightDecay)->at(79), 0.05);
  EXPECT_DOUBLE_EQ(make("kind: constant\nvalue: 0.01\n", ScheduleRole::kWeightDecay)->at(99), 0.01);
}

TEST(ScheduleFactory, ErrorsNameKeyAndValue) {
  EXPECT_EQ(error_of("kind: wobble\n", ScheduleRole::kLambda),
            "s.yaml:1: kind = wobble: expected one of constant|cosine|exponential|linear|sigmoid|steps");
  EXPECT_EQ(error_of("kind: constant\nvalue: 1.5\n", ScheduleRole::kLambda),
            "s.yaml:2: value = 1.5: expected a value in [0, 1]");
  EXPECT_EQ(error_of("kind: linear\nstart: 50\nend: 20\n", ScheduleRole::kLambda),
            "s.yaml:3: end = 20: expected a step after start = 50");
  EXPECT_EQ(error_of("kind: sigmoid\nk: -3\n", ScheduleRole::kLambda), "s.yaml:2: k = -3: expected a value in [0.001, 1000]");
  EXPECT_EQ(error_of("kind: warmup_cosine\npeak: 0.01\nwarmup_steps: 5000\n", ScheduleRole::kLearningRate, 1000),
            "s.yaml:3: warmup_steps = 5000 exceeds train.steps = 1000");
  EXPECT_EQ(error_of("kind: two_stage\npeak: 0.001\nsecond_peak: 0.002\n", ScheduleRole::kLearningRate),
            "s.yaml:3: second_peak = 0.002: expected a value <= peak = 0.001 (the second stage is lower)");
  EXPECT_EQ(error_of("kind: constant\nvalu: 1\n", ScheduleRole::kWeightDecay),
            "s.yaml:2: valu: unknown key 'valu'; expected one of: kind, value");
  EXPECT_EQ(error_of("kind: steps\nat: [10, 5]\nvalues: [0.5, 1]\n", ScheduleRole::kLambda),
            "s.yaml:2: at = [10, 5]: expected increasing whole step numbers >= 0");
  EXPECT_EQ(error_of("value: 1\n", ScheduleRole::kLambda), "s.yaml:1: a lambda schedule needs a kind key");
}
