// The image-generation quality metric of `bitqat eval` for a DiT run: a Fréchet distance between
// generated samples and the test set, in the feature space of a Fashion-MNIST classifier that bitqat
// trains in full precision (configs/fashion_mnist_fp.yaml; its penultimate layer, BitCNN::features),
// plus that classifier's accuracy on the samples against the labels they were conditioned on.
//
// It is a relative metric, for comparing bitqat runs with each other under the same classifier and
// sample count: it is not FID (no Inception-v3 features, 28 x 28 grey images), and its values are not
// comparable with published FIDs. Like FID it is biased upwards for small sample counts.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "data/source.hpp"
#include "models/dit.hpp"
#include "models/flow.hpp"
#include "training/run_loader.hpp"

namespace bitqat::training {

// Mean [d] and covariance [d, d] (unbiased, divisor N - 1, as numpy.cov) of features [N, d], N >= 2,
// in float64.
struct FeatureStats {
  at::Tensor mean, cov;
  int64_t count = 0;
};
FeatureStats feature_stats(const at::Tensor& features);

// The Fréchet distance between the Gaussians N(m1, S1) and N(m2, S2) (Dowson & Landau 1982; the FID
// formula of Heusel et al. 2017): |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The last trace
// is computed as sum_i sqrt(l_i), l_i the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2) (which
// has the eigenvalues of S1 S2), with S1^(1/2) from a symmetric eigendecomposition and eigenvalues
// that rounding made negative set to 0. float64 throughout.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

struct QualityOptions {
  int64_t samples = 1000;  // generated images, sample i conditioned on class i mod num_classes
  int64_t steps = 10;
  double cfg = 2.0;
  models::Solver solver = models::Solver::kHeun;
  uint64_t seed = 1;
};

struct QualityResult {
  double frechet = 0.0;   // generated vs test-set features
  double accuracy = 0.0;  // the classifier's argmax on the samples == their conditioning labels
  int64_t samples = 0;
  int64_t reference = 0;  // test images in the reference statistics
};

// Checks that `classifier` is a Fashion-MNIST CNN run (a UserError naming `classifier_dir` otherwise)
// matching the DiT's data: model.kind cnn, data.kind fashion_mnist.
void check_quality_classifier(const LoadedRun& classifier, const std::string& classifier_dir,
                              const models::DiTConfig& dit);

// Generates options.samples images with `dit` (models::sample_images; they are mapped from [-1, 1]
// to [0, 1] and clamped, as the classifier saw its data) and scores them against every image of
// `test` (the reference statistics).
QualityResult image_quality(models::BitDiTImpl& dit, LoadedRun& classifier, const data::Source& test,
                            const QualityOptions& options);

}  // namespace bitqat::training
