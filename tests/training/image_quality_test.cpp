// The image-quality metric (training/image_quality.hpp): the Fréchet distance on one-dimensional
// cases worked by hand, and on fixed multivariate features against a direct numpy / scipy
// computation (scipy.linalg.sqrtm of the covariance product, as pytorch-fid does it).
#include "training/image_quality.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "tests/command.hpp"

namespace fs = std::filesystem;
using bitqat::training::feature_stats;
using bitqat::training::frechet_distance;

namespace {

at::Tensor column(std::vector<double> v) { return at::tensor(v, at::kDouble).unsqueeze(1); }

void write_features(const std::string& path, const at::Tensor& f) {
  std::ofstream out(path);
  const auto a = f.to(at::kDouble).contiguous();
  for (int64_t i = 0; i < a.size(0); ++i) {
    for (int64_t j = 0; j < a.size(1); ++j) out << fmt::format("{:.17g}{}", a[i][j].item<double>(), j + 1 < a.size(1) ? " " : "\n");
  }
}

}  // namespace

// In one dimension the distance is (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
//   {0, 2, 0, 2}: mean 1, unbiased variance 4/3;  {3, 5, 3, 5}: mean 4, variance 4/3 -> 9
//   {0, 4, 0, 4}: mean 2, variance 16/3 -> 1 + (sqrt(4/3) - sqrt(16/3))^2 = 1 + 4/3
TEST(FrechetDistance, OneDimensionByHand) {
  const auto a = feature_stats(column({0, 2, 0, 2}));
  EXPECT_DOUBLE_EQ(a.mean.item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(a.cov.item<double>(), 4.0 / 3.0);
  EXPECT_EQ(a.count, 4);
  EXPECT_NEAR(frechet_distance(a, feature_stats(column({3, 5, 3, 5}))), 9.0, 1e-12);
  EXPECT_NEAR(frechet_distance(a, feature_stats(column({0, 4, 0, 4}))), 1.0 + 4.0 / 3.0, 1e-12);
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-12);
  EXPECT_THROW(feature_stats(column({1.0})), std::invalid_argument);
}

// Correlated 12-dimensional features (600 and 500 samples) through our eigendecomposition route and
// through scipy's sqrtm: the same number up to float64 rounding of the two algorithms (relative
// 1e-9; measured differences are around 1e-12).
TEST(FrechetDistance, MatchesNumpyScipyOnFixedFeatures) {
  at::manual_seed(17);
  const auto mix_a = at::randn({12, 12}, at::kDouble);
  const auto mix_b = at::randn({12, 12}, at::kDouble) * 0.5 + at::eye(12, at::kDouble);
  const auto a = at::matmul(at::randn({600, 12}, at::kDouble), mix_a);
  const auto b = at::matmul(at::randn({500, 12}, at::kDouble), mix_b) + 0.7;
  const auto dir = fs::temp_directory_path() / ("bitqat_fd_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_features((dir / "a.txt").string(), a);
  write_features((dir / "b.txt").string(), b);
  const auto r = bitqat::testing::run_command(fmt::format("{} {}/tests/training/frechet_check.py {} {}", BITQAT_PYTHON,
                                                          BITQAT_SOURCE_DIR, (dir / "a.txt").string(),
                                                          (dir / "b.txt").string()));
  fs::remove_all(dir);
  ASSERT_EQ(r.code, 0) << r.out;
  const double want = std::stod(r.out);
  const double got = frechet_distance(feature_stats(a), feature_stats(b));
  EXPECT_GT(want, 1.0);
  EXPECT_NEAR(got, want, 1e-9 * std::abs(want)) << "ours " << got << ", scipy " << want;
  // The text files hold the features to 17 significant digits: the statistics agree with them.
  EXPECT_NEAR(frechet_distance(feature_stats(b), feature_stats(a)), got, 1e-9 * std::abs(want));  // symmetric
}
