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
  EXPECT_DOUBLE_EQ(s->at(10), 1.5e-3);                      // start of stage-1 decay
  EXPECT_NEAR(s->at(30), 1.5e-3 * (1 - 0.9 * 0.5), 1e-15);  // halfway through stage 1 (10..50)
  EXPECT_NEAR(s->at(49), 1.5e-3 * (1 - 0.9 * 39.0 / 40), 1e-15);
  EXPECT_DOUBLE_EQ(s->at(50), 1.0e-3);  // the switch: a lower second peak
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

TEST(LambdaRamps, RampsAreMonotoneAndExactAtTheEnds) {
  for (const char* kind : {"linear", "cosine", "sigmoid", "exponential"}) {
    const auto up = make(std::string("kind: ") + kind + "\nstart: 5\nend: 45\n", ScheduleRole::kLambda);
    const auto down =
        make(std::string("kind: ") + kind + "\nstart: 5\nend: 45\nfrom: 1\nto: 0.25\n", ScheduleRole::kLambda);
    EXPECT_DOUBLE_EQ(up->at(0), 0.0) << kind;
    EXPECT_DOUBLE_EQ(up->at(5), 0.0) << kind;
    EXPECT_DOUBLE_EQ(up->at(45), 1.0) << kind;
    EXPECT_DOUBLE_EQ(up->at(1 << 30), 1.0) << kind;
    EXPECT_DOUBLE_EQ(down->at(4), 1.0) << kind;
    EXPECT_DOUBLE_EQ(down->at(45), 0.25) << kind;
    for (int64_t t = 1; t <= 50; ++t) {
      EXPECT_GE(up->at(t), up->at(t - 1)) << kind << " at " << t;
      EXPECT_LE(down->at(t), down->at(t - 1)) << kind << " at " << t;
      EXPECT_GE(up->at(t), 0.0);
      EXPECT_LE(up->at(t), 1.0);
    }
    // Strictly inside the ramp it has left `from` and not yet reached `to`.
    EXPECT_GT(up->at(25), 0.0) << kind;
    EXPECT_LT(up->at(25), 1.0) << kind;
  }
}

TEST(LambdaRamps, HuggingFaceLinearRampOverAThousandSteps) {
  // lambda = min(step / 1000, 1), the recipe of Hugging Face's Llama3-8B 1.58-bit fine-tune.
  const auto s = make("kind: linear\nend: 1000\n", ScheduleRole::kLambda, 5000);
  EXPECT_DOUBLE_EQ(s->at(0), 0.0);
  EXPECT_DOUBLE_EQ(s->at(1), 0.001);
  EXPECT_DOUBLE_EQ(s->at(250), 0.25);
  EXPECT_DOUBLE_EQ(s->at(999), 0.999);
  EXPECT_DOUBLE_EQ(s->at(1000), 1.0);
  EXPECT_DOUBLE_EQ(s->at(4999), 1.0);
  EXPECT_EQ(s->describe(), "linear 0->1 over steps [0, 1000)");
}

TEST(LambdaRamps, StepsWithFromAndDescribe) {
  const auto st = make("kind: steps\nfrom: 0.1\nat: [0, 3]\nvalues: [0.5, 0.75]\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(st->at(0), 0.5);  // at[0] = 0: `from` is never used
  EXPECT_DOUBLE_EQ(st->at(2), 0.5);
  EXPECT_DOUBLE_EQ(st->at(3), 0.75);
  EXPECT_EQ(st->describe(), "steps 0.1, 0.5@0, 0.75@3");
  const auto late = make("kind: steps\nfrom: 0.1\nat: [7]\nvalues: [1]\n", ScheduleRole::kLambda);
  EXPECT_DOUBLE_EQ(late->at(6), 0.1);
  EXPECT_DOUBLE_EQ(late->at(7), 1.0);
  EXPECT_EQ(make("kind: sigmoid\nk: 15\nend: 200\n", ScheduleRole::kLambda)->describe(),
            "sigmoid(k=15) 0->1 over steps [0, 200)");
}

TEST(LearningRate, WarmupLinearWithFloorAndOwnTotal) {
  // Warm-up over steps 0..3 to 0.02, then linear decay to 0.002 at step 44 (its own total), 0.002 after.
  const auto s =
      make("kind: warmup_linear\npeak: 0.02\nwarmup_steps: 4\nmin: 0.002\ntotal: 44\n", ScheduleRole::kLearningRate);
  EXPECT_DOUBLE_EQ(s->at(0), 0.005);
  EXPECT_DOUBLE_EQ(s->at(1), 0.01);
  EXPECT_DOUBLE_EQ(s->at(3), 0.02);
  EXPECT_DOUBLE_EQ(s->at(4), 0.02);
  EXPECT_NEAR(s->at(14), 0.002 + 0.018 * 0.75, 1e-15);  // a quarter of the way through 4..44
  EXPECT_NEAR(s->at(24), 0.011, 1e-15);
  EXPECT_DOUBLE_EQ(s->at(44), 0.002);
  EXPECT_DOUBLE_EQ(s->at(99), 0.002);
  for (int64_t t = 5; t < 60; ++t) EXPECT_LE(s->at(t), s->at(t - 1));
  EXPECT_EQ(s->describe(), "warm-up 4 steps to 0.02, linear decay to 0.002 at step 44");
}

TEST(LearningRate, TwoStageDefaults) {
  // second_peak = 2/3 of the peak, min_ratio 0.1, switch at total/2, no warm-up.
  const auto s = make("kind: two_stage\npeak: 0.003\n", ScheduleRole::kLearningRate, 40);
  EXPECT_DOUBLE_EQ(s->at(0), 0.003);
  EXPECT_NEAR(s->at(10), 0.003 * (1 - 0.9 * 0.5), 1e-15);
  EXPECT_NEAR(s->at(19), 0.003 * (1 - 0.9 * 19.0 / 20), 1e-15);
  EXPECT_NEAR(s->at(20), 0.002, 1e-15);
  EXPECT_NEAR(s->at(30), 0.002 * (1 - 0.9 * 0.5), 1e-15);
  EXPECT_NEAR(s->at(40), 0.0002, 1e-15);
  EXPECT_NEAR(s->at(41), 0.0002, 1e-15);
}

TEST(ScheduleFactory, CrossFieldAndRangeErrors) {
  EXPECT_EQ(error_of("kind: exponential\nk: 0\n", ScheduleRole::kLambda),
            "s.yaml:2: k = 0: expected a value in [0.001, 100]");
  EXPECT_EQ(error_of("kind: linear\nstart: 150\n", ScheduleRole::kLambda),
            "s.yaml:1: end = 100 (the default, train.steps): expected a step after start = 150");
  EXPECT_EQ(error_of("kind: cosine\nto: 1.2\n", ScheduleRole::kLambda),
            "s.yaml:2: to = 1.2: expected a value in [0, 1]");
  EXPECT_EQ(error_of("kind: steps\nat: [1, 2]\nvalues: [0.5, 2]\n", ScheduleRole::kLambda),
            "s.yaml:3: values = [0.5, 2]: expected lambda values in [0, 1]");
  EXPECT_EQ(error_of("kind: steps\nat: [1, 2]\nvalues: [0.5]\n", ScheduleRole::kLambda),
            "s.yaml:3: values = [0.5]: expected 2 values, one per entry of at");
  EXPECT_EQ(error_of("kind: constant\nvalue: -0.1\n", ScheduleRole::kLearningRate),
            "s.yaml:2: value = -0.1: expected a value in [0, 10]");
  EXPECT_EQ(error_of("kind: warmup_cosine\npeak: 0.01\nmin: 0.02\n", ScheduleRole::kLearningRate),
            "s.yaml:3: min = 0.02: expected a value <= peak = 0.01");
  EXPECT_EQ(error_of("kind: warmup_cosine\npeak: 0.01\nwarmup_steps: 50\ntotal: 40\n", ScheduleRole::kLearningRate),
            "s.yaml:3: warmup_steps = 50 exceeds total = 40");
  EXPECT_EQ(error_of("kind: warmup_linear\npeak: 0.01\nwarmup_steps: -5\n", ScheduleRole::kLearningRate),
            "s.yaml:3: warmup_steps = -5: expected a value in [0, 1099511627776]");
  EXPECT_EQ(error_of("kind: two_stage\npeak: 0.01\nwarmup_steps: 60\n", ScheduleRole::kLearningRate),
            "s.yaml:1: switch = 50 (the default, train.steps / 2): expected a step after warmup_steps = 60");
  EXPECT_EQ(error_of("kind: two_stage\npeak: 0.01\nswitch: 101\n", ScheduleRole::kLearningRate),
            "s.yaml:3: switch = 101 exceeds train.steps = 100");
  EXPECT_EQ(error_of("kind: two_stage\nvalue: 0.1\nswitch: 500\n", ScheduleRole::kWeightDecay),
            "s.yaml:3: switch = 500 exceeds train.steps = 100");
  EXPECT_EQ(error_of("kind: warmup_cosine\n", ScheduleRole::kWeightDecay),
            "s.yaml:1: kind = warmup_cosine: expected one of constant|two_stage");
  try {
    make_schedule(Node::load_string("train:\n  lr: 0.001\n", "c.yaml").child("train").child("lr"),
                  ScheduleRole::kLearningRate, 100);
    ADD_FAILURE() << "a bare number is not a schedule";
  } catch (const bitqat::core::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "c.yaml:2: train.lr: expected a learning-rate schedule as a mapping with a kind key, e.g. {kind: "
              "constant, value: 1.0}");
  }
}

TEST(ScheduleFactory, ErrorsNameKeyAndValue) {
  EXPECT_EQ(error_of("kind: wobble\n", ScheduleRole::kLambda),
            "s.yaml:1: kind = wobble: expected one of constant|cosine|exponential|linear|sigmoid|steps");
  EXPECT_EQ(error_of("kind: constant\nvalue: 1.5\n", ScheduleRole::kLambda),
            "s.yaml:2: value = 1.5: expected a value in [0, 1]");
  EXPECT_EQ(error_of("kind: linear\nstart: 50\nend: 20\n", ScheduleRole::kLambda),
            "s.yaml:3: end = 20: expected a step after start = 50");
  EXPECT_EQ(error_of("kind: sigmoid\nk: -3\n", ScheduleRole::kLambda),
            "s.yaml:2: k = -3: expected a value in [0.001, 1000]");
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

// The reference lists each kind and its keys with the defaults the parse uses: a two_stage
// learning rate without keys resolves to peak 1.5e-3, second_peak 2/3 of it, switch train.steps / 2.
TEST(ScheduleReference, EveryKindWithItsKeysAndDefaults) {
  const auto rows = bitqat::schedules::schedule_reference(ScheduleRole::kLearningRate, "optim.lr");
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows[0].key, "optim.lr.kind");
  EXPECT_EQ(rows[0].allowed, "constant|two_stage|warmup_cosine|warmup_linear");
  auto find = [&](const std::string& key, const std::string& when) -> const bitqat::core::KeyReference* {
    for (const auto& r : rows) {
      if (r.key == key && r.when == when) return &r;
    }
    return nullptr;
  };
  for (const char* k : {"constant", "warmup_cosine", "warmup_linear", "two_stage"}) {
    EXPECT_NE(find("optim.lr.kind", std::string("kind: ") + k), nullptr) << k;
  }
  ASSERT_NE(find("optim.lr.peak", "kind: two_stage"), nullptr);
  EXPECT_EQ(find("optim.lr.peak", "kind: two_stage")->fallback, "0.0015");
  EXPECT_EQ(find("optim.lr.second_peak", "kind: two_stage")->fallback, "2/3 of peak");
  EXPECT_EQ(find("optim.lr.switch", "kind: two_stage")->fallback, "train.steps / 2");
  EXPECT_EQ(find("optim.lr.total", "kind: warmup_cosine")->fallback, "train.steps");
  EXPECT_EQ(find("optim.lr.value", "kind: constant")->fallback, "0.001");
  EXPECT_EQ(find("optim.lr.peak", "kind: constant"), nullptr);
  // The parse uses the same defaults: two_stage of 100 steps, no warm-up, peak 1.5e-3, switch 50,
  // second peak 1e-3: step 50 is the second stage's start.
  const auto s = make("kind: two_stage\n", ScheduleRole::kLearningRate, 100);
  EXPECT_DOUBLE_EQ(s->at(0), 1.5e-3);
  EXPECT_DOUBLE_EQ(s->at(50), 1e-3);
  const auto lambda = bitqat::schedules::schedule_reference(ScheduleRole::kLambda, "quant.lambda_w");
  bool sigmoid_k = false;
  for (const auto& r : lambda) {
    sigmoid_k |= r.key == "quant.lambda_w.k" && r.when == "kind: sigmoid" && r.fallback == "20";
  }
  EXPECT_TRUE(sigmoid_k);
}
