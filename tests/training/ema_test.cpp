#include "training/ema.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

using bitqat::training::Ema;

namespace {

at::Tensor vec(std::vector<float> v) { return at::tensor(v, at::kFloat); }

}  // namespace

// The update by hand, in values that are exact in float32: decay 0.75 (ema += 0.25 (p - ema)),
// start_step 1, so step 1 copies the parameters and step 2 on averages.
TEST(Ema, UpdateByHand) {
  auto p = vec({1, 2});
  Ema ema({{"w", p}}, 0.75, 1);
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({1, 2})));  // a copy of the parameters at the start
  p.copy_(vec({2, 4}));
  ema.update(1);  // step 1 <= start_step: the parameters themselves
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({2, 4})));
  p.copy_(vec({4, 0}));
  ema.update(2);  // 0.75 [2, 4] + 0.25 [4, 0]
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({2.5, 3})));
  p.copy_(vec({100, 100}));
  ema.update(3, at::ones({}, at::kFloat));  // a skipped step leaves the average as it was
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({2.5, 3})));
  p.copy_(vec({6.5, 7}));
  ema.update(3, at::zeros({}, at::kFloat));  // 0.75 [2.5, 3] + 0.25 [6.5, 7]
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({3.5, 4})));
  // The average is not the parameter: changing one leaves the other.
  EXPECT_TRUE(p.equal(vec({6.5, 7})));
}

TEST(Ema, LoadRestoresAndNamesWhatIsWrong) {
  auto p = vec({1, 2});
  Ema ema({{"w", p}}, 0.9, 0);
  ema.load({{"w", vec({5, 6})}}, "ck/ema.safetensors");
  EXPECT_TRUE(ema.tensors()[0].second.equal(vec({5, 6})));
  try {
    ema.load({}, "ck/ema.safetensors");
    FAIL() << "a missing tensor was accepted";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_STREQ(e.what(), "ck/ema.safetensors: the average of w is missing");
  }
  try {
    ema.load({{"w", vec({5, 6})}, {"v", vec({5, 6})}}, "ck/ema.safetensors");
    FAIL() << "a tensor of no parameter was accepted";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_STREQ(e.what(), "ck/ema.safetensors: v is not a trainable parameter of this model");
  }
  try {
    ema.load({{"w", vec({5, 6, 7})}}, "ck/ema.safetensors");
    FAIL() << "a mis-shaped tensor was accepted";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_STREQ(e.what(), "ck/ema.safetensors: the average of w has shape [3], the parameter [2]");
  }
}
