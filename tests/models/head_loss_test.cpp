// The fused head + loss over chunks of tokens: its CE and KL against the definitions computed one
// token at a time in double precision, its gradients against central differences in double, chunking
// that changes nothing but rounding, and the refusals.
#include "models/head_loss.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

using bitqat::models::head_loss;

namespace {

const auto kDouble = at::TensorOptions().dtype(at::kDouble);

// CE and KL by the definitions from logits zs = h w^T, zt = ht wt^T, computed here with plain loops.
struct ByHand {
  double ce = 0, kd = 0;
};
ByHand by_hand(const at::Tensor& h, const at::Tensor& w, const at::Tensor& ht, const at::Tensor& wt,
               const at::Tensor& y, double temp) {
  const int64_t n = h.size(0), v = w.size(0);
  auto logits = [](const at::Tensor& a, const at::Tensor& b, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t k = 0; k < a.size(1); ++k) s += a[i][k].item<double>() * b[j][k].item<double>();
    return s;
  };
  ByHand r;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> zs(v), zt(v);
    for (int64_t j = 0; j < v; ++j) {
      zs[j] = logits(h, w, i, j);
      if (ht.defined()) zt[j] = logits(ht, wt, i, j);
    }
    double sum = 0;
    for (double z : zs) sum += std::exp(z);
    r.ce += std::log(sum) - zs[y[i].item<int64_t>()];
    if (!ht.defined()) continue;
    double ss = 0, st = 0;
    for (int64_t j = 0; j < v; ++j) ss += std::exp(zs[j] / temp), st += std::exp(zt[j] / temp);
    for (int64_t j = 0; j < v; ++j) {
      const double ps = std::exp(zs[j] / temp) / ss, pt = std::exp(zt[j] / temp) / st;
      r.kd += pt * std::log(pt / ps);
    }
  }
  r.ce /= static_cast<double>(n);
  r.kd /= static_cast<double>(n);
  return r;
}

}  // namespace

// 7 tokens, a vocabulary of 11, chunks of 1, 3 (7 = 3 + 3 + 1) and all at once; with a teacher of
// another width (the head matches distributions, not features) and without one.
TEST(HeadLoss, EqualsTheDefinitionsComputedByHand) {
  at::manual_seed(11);
  const auto h = at::randn({7, 5}, kDouble), w = at::randn({11, 5}, kDouble);
  const auto ht = at::randn({7, 3}, kDouble), wt = at::randn({11, 3}, kDouble) * 2;
  const auto y = at::randint(0, 11, {7}, at::kLong);
  for (const int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{100}}) {
    for (const double temp : {1.0, 2.5}) {
      const auto want = by_hand(h, w, ht, wt, y, temp);
      const auto got = head_loss(h, w, y, ht, wt, 0.3, temp, chunk);
      EXPECT_NEAR(got.ce.item<double>(), want.ce, 1e-12) << chunk;
      EXPECT_NEAR(got.kd.item<double>(), want.kd, 1e-12) << chunk;
      EXPECT_NEAR(got.total.item<double>(), 0.3 * want.ce + 0.7 * temp * temp * want.kd, 1e-12) << chunk;
      EXPECT_GT(want.kd, 0.05);
    }
    const auto plain = head_loss(h, w, y, {}, {}, 1.0, 1.0, chunk);
    EXPECT_NEAR(plain.total.item<double>(), by_hand(h, w, {}, {}, y, 1.0).ce, 1e-12);
    EXPECT_FALSE(plain.kd.defined());
  }
  // A teacher identical to the student: KL exactly 0 (the same log-softmax on both sides).
  EXPECT_EQ(head_loss(h, w, y, h.clone(), w.clone(), 0.3, 2.0, 3).kd.item<double>(), 0.0);
}

// float32, as training runs it: the fused loss against ATen's cross-entropy of the whole logits.
// Both sum 64 per-token terms of magnitude ~log(V) = 6.9 in float32; 1e-5 relative is ~100 ulps.
TEST(HeadLoss, MatchesCrossEntropyOfTheFullLogitsInFloat32) {
  at::manual_seed(12);
  const auto h = at::randn({64, 32}), w = at::randn({1000, 32}) * 0.3;
  const auto y = at::randint(0, 1000, {64}, at::kLong);
  const double want = at::cross_entropy_loss(at::matmul(h, w.t()), y).item<double>();
  for (const int64_t chunk : {int64_t{0}, int64_t{5}}) {
    EXPECT_NEAR(head_loss(h, w, y, {}, {}, 1.0, 1.0, chunk).total.item<double>(), want, 1e-5 * want);
  }
}

// Gradients with respect to h and w through the node (chunks of 3 of 8 tokens) against central
// differences of the loss in double: step 1e-5, truncation O(h^2 f''') ~ 1e-10; the gradients are
// O(0.1), so 1e-7 absolute would be broken by orders of magnitude by a wrong term (a missing T, the
// KL's direction, a chunk counted twice). The incoming gradient (here 2.5) scales both.
TEST(HeadLoss, GradientsMatchFiniteDifferencesInDouble) {
  at::manual_seed(13);
  for (const bool teacher : {false, true}) {
    auto h = at::randn({8, 4}, kDouble).requires_grad_(true);
    auto w = at::randn({9, 4}, kDouble).requires_grad_(true);
    const auto ht = teacher ? at::randn({8, 6}, kDouble) : at::Tensor();
    const auto wt = teacher ? at::randn({9, 6}, kDouble) : at::Tensor();
    const auto y = at::randint(0, 9, {8}, at::kLong);
    auto f = [&] { return head_loss(h, w, y, ht, wt, 0.3, 2.0, 3).total * 2.5; };
    f().backward();
    const double step = 1e-5;
    at::NoGradGuard no_grad;
    for (auto* p : {&h, &w}) {
      const auto g = p->grad().clone();
      auto flat = p->view({-1});
      double worst = 0;
      for (int64_t i = 0; i < flat.numel(); ++i) {
        const double keep = flat[i].item<double>();
        flat[i] = keep + step;
        const double up = f().item<double>();
        flat[i] = keep - step;
        const double down = f().item<double>();
        flat[i] = keep;
        worst = std::max(worst, std::abs((up - down) / (2 * step) - g.view({-1})[i].item<double>()));
      }
      EXPECT_LT(worst, 1e-7) << "teacher " << teacher;
      EXPECT_GT(g.abs().max().item<double>(), 1e-2);
    }
  }
}

// The head tied to an embedding that is also read at the input: autograd sums both gradients, as
// for the unfused linear head. Against the same model with logits formed by at::linear, in double.
TEST(HeadLoss, TiedHeadGradientAddsToTheEmbeddings) {
  at::manual_seed(14);
  auto emb = at::randn({10, 4}, kDouble).requires_grad_(true);
  const auto tokens = at::randint(0, 10, {6}, at::kLong), y = at::randint(0, 10, {6}, at::kLong);
  auto h = at::tanh(emb.index_select(0, tokens));
  head_loss(h, emb, y, {}, {}, 1.0, 1.0, 4).total.backward();
  const auto fused = emb.grad().clone();
  emb.mutable_grad().reset();
  h = at::tanh(emb.index_select(0, tokens));
  at::cross_entropy_loss(at::linear(h, emb), y).backward();
  EXPECT_LT((fused - emb.grad()).abs().max().item<double>(), 1e-14);
}

// Without grad mode (evaluation) the loss is the same and nothing is recorded.
TEST(HeadLoss, NoGradModeComputesTheLossAlone) {
  at::manual_seed(15);
  const auto h = at::randn({5, 4}, kDouble).requires_grad_(true), w = at::randn({7, 4}, kDouble);
  const auto y = at::randint(0, 7, {5}, at::kLong);
  const double with_grad = head_loss(h, w, y).total.item<double>();
  at::NoGradGuard no_grad;
  const auto l = head_loss(h, w, y);
  EXPECT_FALSE(l.total.requires_grad());
  EXPECT_EQ(l.total.item<double>(), with_grad);
}

TEST(HeadLoss, RefusesShapesTargetsAndSettingsItCannotUse) {
  const auto h = at::randn({4, 3}), w = at::randn({6, 3});
  const auto y = at::zeros({4}, at::kLong);
  EXPECT_THROW(head_loss(h, at::randn({6, 2}), y), c10::Error);                    // d differs
  EXPECT_THROW(head_loss(h, w, at::zeros({3}, at::kLong)), c10::Error);            // N differs
  EXPECT_THROW(head_loss(h, w, at::full({4}, 6, at::kLong)), c10::Error);          // target == V
  EXPECT_THROW(head_loss(h, w, at::full({4}, -1, at::kLong)), c10::Error);         // negative target
  EXPECT_THROW(head_loss(h, w, y, at::randn({4, 2}), {}), c10::Error);             // half a teacher
  EXPECT_THROW(head_loss(h, w, y, at::randn({4, 2}), at::randn({5, 2})), c10::Error);  // teacher V
  EXPECT_THROW(head_loss(h, w, y, at::randn({4, 2}), at::randn({6, 2}), 1.5), c10::Error);  // alpha
  EXPECT_THROW(head_loss(h, w, y, at::randn({4, 2}), at::randn({6, 2}), 0.5, 0.0), c10::Error);  // T
}
