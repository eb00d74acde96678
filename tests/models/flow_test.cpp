// Flow matching and its samplers (models/flow.hpp): the loss on a case checked by hand, Euler and
// Heun on linear ODEs with known solutions (their exact discrete solutions and their error orders),
// classifier-free guidance at w = 0 and 1, label dropout, and the counter-based randomness.
#include "models/flow.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "bitlinear/convert.hpp"

using namespace bitqat;
using S = std::vector<std::string>;
using models::Solver;

// Two samples of two values; the "model" is v(x, t) = 2 x.
//   sample 0: t = 1/4, x0 = (0.5, -1), x1 = (1, 2): x_t = (0.625, -0.25), v = (1.25, -0.5),
//             target x1 - x0 = (0.5, 3), errors (0.75, -3.5), squares 0.5625 and 12.25
//   sample 1: t = 1, x0 = (0.5, -1), x1 = (1, 2): x_t = x1, v = (2, 4), errors (1.5, 1), squares 2.25, 1
// mean of the four squares: 16.0625 / 4 = 4.015625 (every number is exact in binary).
TEST(FlowMatching, LossOnAHandCheckedCase) {
  const auto x0 = at::tensor({0.5, -1.0, 0.5, -1.0}, at::kDouble).reshape({2, 2});
  const auto x1 = at::tensor({1.0, 2.0, 1.0, 2.0}, at::kDouble).reshape({2, 2});
  const auto t = at::tensor({0.25, 1.0}, at::kDouble);
  at::Tensor seen_t;
  const models::VelocityFn v = [&](const at::Tensor& x, const at::Tensor& tt) {
    seen_t = tt;
    return 2 * x;
  };
  EXPECT_EQ(models::flow_matching_loss(v, x0, x1, t).item<double>(), 4.015625);
  EXPECT_TRUE(seen_t.equal(t));
  EXPECT_TRUE(models::flow_interpolate(x0, x1, t)[0].equal(at::tensor({0.625, -0.25}, at::kDouble)));
  // The true velocity of the straight path scores 0.
  const models::VelocityFn oracle = [&](const at::Tensor&, const at::Tensor&) { return x1 - x0; };
  EXPECT_EQ(models::flow_matching_loss(oracle, x0, x1, t).item<double>(), 0.0);
}

// dx/dt = lambda x from x0 at t = 0 has x(1) = x0 e^lambda. With h = 1/S, one Euler step multiplies
// by (1 + lambda h) and one Heun step by (1 + lambda h + (lambda h)^2 / 2), so the solvers must give
// exactly those powers (up to float64 rounding over S steps: relative 1e-13). Their global errors
// are O(h) and O(h^2): halving h divides them by 2 and 4 (for lambda = -1.5 at S = 32 -> 64 the exact
// ratios of the closed forms are 2.0139 and 4.0719).
TEST(FlowSampler, LinearOdeExactStepsAndErrorOrders) {
  const double lambda = -1.5;
  const auto x0 = at::tensor({1.0, -2.0, 0.5}, at::kDouble);
  const models::VelocityFn v = [&](const at::Tensor& x, const at::Tensor&) { return lambda * x; };
  auto err = [&](int64_t steps, Solver s) {
    const auto x = models::integrate_flow(v, x0, steps, s);
    const double h = 1.0 / static_cast<double>(steps);
    const double step_factor = s == Solver::kEuler ? 1 + lambda * h : 1 + lambda * h + 0.5 * lambda * lambda * h * h;
    const auto discrete = x0 * std::pow(step_factor, static_cast<double>(steps));
    EXPECT_LT(((x - discrete) / discrete).abs().max().item<double>(), 1e-13) << steps;
    return (x - x0 * std::exp(lambda)).abs().max().item<double>();
  };
  const double e32 = err(32, Solver::kEuler), e64 = err(64, Solver::kEuler);
  const double h32 = err(32, Solver::kHeun), h64 = err(64, Solver::kHeun);
  EXPECT_NEAR(e32 / e64, 2.0139, 1e-3);
  EXPECT_NEAR(h32 / h64, 4.0719, 1e-3);
  EXPECT_LT(h64, e64 / 50);  // second order is far closer
}

// The solvers pass the right times: dx/dt = t from 0 gives x(1) = x0 + 1/2. Euler's left sums give
// h^2 (0 + 1 + ... + S-1) = (1 - 1/S) / 2; Heun's trapezoid is exact for a linear integrand.
TEST(FlowSampler, TimeDependentFieldSeesTheGridTimes) {
  const auto x0 = at::zeros({2, 1}, at::kDouble);
  const models::VelocityFn v = [&](const at::Tensor& x, const at::Tensor& t) {
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2}));
    return t.unsqueeze(1).expand_as(x);
  };
  EXPECT_NEAR(models::integrate_flow(v, x0, 8, Solver::kEuler)[0][0].item<double>(), (1 - 1.0 / 8) / 2, 1e-15);
  EXPECT_NEAR(models::integrate_flow(v, x0, 8, Solver::kHeun)[1][0].item<double>(), 0.5, 1e-15);
  EXPECT_THROW(models::integrate_flow(v, x0, 0, Solver::kEuler), std::invalid_argument);
  Solver s;
  EXPECT_TRUE(models::parse_solver("heun", &s) && s == Solver::kHeun);
  EXPECT_FALSE(models::parse_solver("rk4", &s));
}

namespace {

models::BitDiT random_dit() {
  models::DiTConfig c;
  c.height = c.width = 8;
  c.patch_size = 2;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.num_classes = 4;
  c.freq_dim = 8;
  models::BitDiT m(c, bitlinear::QuantSpec{}, S{"blocks.*"}, S{});
  at::NoGradGuard g;
  for (auto& p : m->parameters()) p.normal_(0.0, 0.3);  // non-zero adaLN: labels matter
  m->to(at::kDouble);
  bitlinear::set_quant_lambdas(*m, 0.0, 0.0);
  return m;
}

}  // namespace

// Guidance v_u + w (v_c - v_u) from one batched pass: w = 0 is the unconditional velocity and w = 1
// the conditional one. The batched pass sums in another order than single ones, and the blend adds
// one rounding: in float64 on outputs of order 10 the difference stays below 1e-12.
TEST(Guidance, ZeroIsUnconditionalOneIsConditional) {
  at::manual_seed(11);
  auto m = random_dit();
  at::NoGradGuard g;
  const auto x = at::randn({3, 1, 8, 8}, at::kDouble);
  const auto t = at::tensor({0.1, 0.5, 0.9}, at::kDouble);
  const auto y = at::tensor({0, 3, 1}, at::kLong);
  const auto vc = m->forward(x, t, y);
  const auto vu = m->forward(x, t, at::full({3}, 4, at::kLong));
  ASSERT_GT((vc - vu).abs().max().item<double>(), 1e-3);  // the label changes the velocity
  EXPECT_LT((models::guided_velocity(*m, x, t, y, 0.0) - vu).abs().max().item<double>(), 1e-12);
  EXPECT_LT((models::guided_velocity(*m, x, t, y, 1.0) - vc).abs().max().item<double>(), 1e-12);
  EXPECT_LT((models::guided_velocity(*m, x, t, y, 2.5) - (vu + 2.5 * (vc - vu))).abs().max().item<double>(), 1e-12);
}

// Label dropout replaces exactly the labels whose counter uniform falls below p.
TEST(Guidance, LabelDropout) {
  const auto rows = at::arange(1000, 11000, at::kLong);
  const auto labels = rows.remainder(10);
  EXPECT_TRUE(models::drop_labels(labels, rows, 9, 0.0, 10).equal(labels));
  EXPECT_TRUE(models::drop_labels(labels, rows, 9, 1.0, 10).eq(10).all().item<bool>());
  const auto d = models::drop_labels(labels, rows, 9, 0.1, 10);
  const auto u = models::counter_uniform(9, rows);
  EXPECT_TRUE(d.eq(10).equal(u.lt(0.1)));
  EXPECT_TRUE(d.masked_select(u.ge(0.1)).equal(labels.masked_select(u.ge(0.1))));
  // 10000 Bernoulli(0.1) draws: standard deviation 0.003; 5 of them is 0.015.
  EXPECT_NEAR(d.eq(10).to(at::kDouble).mean().item<double>(), 0.1, 0.015);
}

// A sample's randomness depends on (seed, its id) only; the normals have mean 0 and variance 1
// (200000 draws: standard errors 0.0022 and 0.0032; bounds of 5 of them).
TEST(CounterRandomness, PerRowAndDistribution) {
  const auto a = models::counter_normal(5, at::tensor({3, 8, 1}, at::kLong), 7);
  const auto b = models::counter_normal(5, at::tensor({8}, at::kLong), 7);
  EXPECT_TRUE(a[1].equal(b[0]));
  EXPECT_FALSE(a[0].equal(a[2]));
  EXPECT_FALSE(models::counter_normal(6, at::tensor({8}, at::kLong), 7).equal(b));
  const auto z = models::counter_normal(1, at::arange(2000, at::kLong), 100).to(at::kDouble);
  EXPECT_NEAR(z.mean().item<double>(), 0.0, 0.011);
  EXPECT_NEAR(z.var().item<double>(), 1.0, 0.016);
  const auto u = models::counter_uniform(1, at::arange(100000, at::kLong));
  EXPECT_GE(u.min().item<double>(), 0.0);
  EXPECT_LT(u.max().item<double>(), 1.0);
  EXPECT_NEAR(u.mean().item<double>(), 0.5, 0.005);  // standard error 0.0009
}

// Training times: uniform is counter_uniform itself; logit-normal times are sigmoid(m + s n) of one
// counter normal per row (so a row's time does not depend on its batch), with logit(t) of mean m and
// standard deviation s: over 100,000 rows the standard errors are s / 316 for the mean and about
// s / 447 for the standard deviation, and the bounds are 5 of them.
TEST(TrainingTimes, UniformAndLogitNormal) {
  const auto rows = at::arange(100000, at::kLong);
  EXPECT_TRUE(models::sample_times(3, rows, models::TimeSampling::kUniform, 0.0, 1.0)
                  .equal(models::counter_uniform(3, rows)));
  for (const auto& [m, sd] : std::vector<std::pair<double, double>>{{0.0, 1.0}, {0.5, 0.7}}) {
    const auto t = models::sample_times(3, rows, models::TimeSampling::kLogitNormal, m, sd);
    ASSERT_EQ(t.scalar_type(), at::kDouble);
    EXPECT_GT(t.min().item<double>(), 0.0);
    EXPECT_LT(t.max().item<double>(), 1.0);
    const auto logit = (t / (1 - t)).log();
    EXPECT_NEAR(logit.mean().item<double>(), m, 5 * sd / 316.0);
    EXPECT_NEAR(logit.std().item<double>(), sd, 5 * sd / 447.0);
    // Row 7's time is the same alone as within the batch.
    EXPECT_EQ(models::sample_times(3, at::tensor({7}, at::kLong), models::TimeSampling::kLogitNormal, m, sd)
                  .item<double>(),
              t[7].item<double>());
  }
  // m = 0: the median is 1/2; the middle of the path gets more of the draws than uniform's 20% in
  // [0.4, 0.6): 2 Phi(logit(0.6)) - 1 = 2 Phi(0.405) - 1 = 0.315.
  const auto t = models::sample_times(3, rows, models::TimeSampling::kLogitNormal, 0.0, 1.0);
  const double mid = (t.ge(0.4) & t.lt(0.6)).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(mid, 0.315, 0.01);
}

// Sample i starts from the noise of (seed, i), so the first images do not depend on how many are
// drawn or how they are chunked (float64: only summation order differs, below 1e-12).
TEST(SampleImages, SampleIDependsOnlyOnItsSeedAndLabel) {
  at::manual_seed(12);
  auto m = random_dit();
  const auto labels = at::tensor({2, 0, 1, 3, 4}, at::kLong);
  const auto all = models::sample_images(*m, labels, 3, 1.5, Solver::kHeun, 7, /*chunk=*/2);
  const auto two = models::sample_images(*m, labels.narrow(0, 0, 2), 3, 1.5, Solver::kHeun, 7);
  ASSERT_EQ(all.sizes(), (std::vector<int64_t>{5, 1, 8, 8}));
  EXPECT_LT((all.narrow(0, 0, 2) - two).abs().max().item<double>(), 1e-12);
  const auto other = models::sample_images(*m, labels.narrow(0, 0, 2), 3, 1.5, Solver::kHeun, 8);
  EXPECT_GT((other - two).abs().max().item<double>(), 1e-3);
  EXPECT_TRUE(m->is_training());  // mode restored
}
