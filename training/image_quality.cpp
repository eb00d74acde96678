#include "training/image_quality.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <stdexcept>

#include "core/error.hpp"
#include "models/cnn.hpp"

namespace bitqat::training {
namespace {

// Features and predicted classes of images in [0, 1], in batches.
void classify(models::BitCNNImpl& cnn, const at::Tensor& images, std::vector<at::Tensor>* features,
              std::vector<at::Tensor>* predicted) {
  const auto device = cnn.fc1->weight.device();
  for (int64_t i = 0; i < images.size(0); i += 500) {
    const auto x = images.narrow(0, i, std::min<int64_t>(500, images.size(0) - i)).to(device, at::kFloat);
    const auto f = cnn.features(x);
    features->push_back(f.to(at::kCPU));
    if (predicted) predicted->push_back(cnn.fc2->forward(f).argmax(-1).to(at::kCPU));
  }
}

}  // namespace

FeatureStats feature_stats(const at::Tensor& features) {
  if (features.dim() != 2 || features.size(0) < 2) {
    throw std::invalid_argument(fmt::format("feature_stats: expected [N >= 2, d] features, got {} dims of {} rows",
                                            features.dim(), features.dim() > 0 ? features.size(0) : 0));
  }
  const auto f = features.to(at::kCPU, at::kDouble);
  const auto mean = f.mean(0);
  const auto c = f - mean;
  return {mean, at::matmul(c.t(), c) / static_cast<double>(f.size(0) - 1), f.size(0)};
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  if (a.mean.sizes() != b.mean.sizes()) {
    throw std::invalid_argument(
        fmt::format("frechet_distance: feature sizes {} and {} differ", a.mean.size(0), b.mean.size(0)));
  }
  const auto [ev, evec] = at::linalg_eigh(a.cov);
  const auto root = at::matmul(evec * ev.clamp_min(0).sqrt().unsqueeze(0), evec.t());  // S1^(1/2)
  auto m = at::matmul(at::matmul(root, b.cov), root);
  m = (m + m.t()) / 2;  // symmetric up to rounding; eigvalsh reads one triangle
  const double tr_sqrt = at::linalg_eigvalsh(m).clamp_min(0).sqrt().sum().item<double>();
  const double diff = (a.mean - b.mean).square().sum().item<double>();
  return diff + a.cov.trace().item<double>() + b.cov.trace().item<double>() - 2.0 * tr_sqrt;
}

void check_quality_classifier(const LoadedRun& classifier, const std::string& dir, const models::DiTConfig& dit) {
  const auto kind = classifier.cfg.model.kind;
  const auto data = classifier.cfg.data.kind;
  if (kind != models::ModelKind::kCNN || data != data::SourceKind::kFashionMnist) {
    throw core::UserError(
        fmt::format("--classifier {}: a {} run on data.kind {}; the quality metric needs a Fashion-MNIST classifier "
                    "(model.kind cnn, data.kind fashion_mnist; train one with configs/fashion_mnist_fp.yaml)",
                    dir, models::to_string(kind), data::to_string(data)));
  }
  if (dit.channels != 1 || dit.height != 28 || dit.width != 28) {
    throw core::UserError(fmt::format("the DiT generates {} x {} x {} images; the classifier at {} reads 1 x 28 x 28",
                                      dit.channels, dit.height, dit.width, dir));
  }
}

QualityResult image_quality(models::BitDiTImpl& dit, LoadedRun& classifier, const data::Source& test,
                            const QualityOptions& o) {
  if (o.samples < 2) throw core::UserError(fmt::format("--samples {}: expected at least 2", o.samples));
  auto* cnn = dynamic_cast<models::BitCNNImpl*>(&classifier.task->module());
  if (!cnn) throw std::logic_error("image_quality: the classifier run's module is not a BitCNN");
  at::NoGradGuard no_grad;
  cnn->eval();

  std::vector<at::Tensor> ref_features, gen_features, predicted;
  int64_t reference = 0;
  for (const auto& b : test.val_batches(1000, std::numeric_limits<int64_t>::max())) {
    classify(*cnn, b.inputs, &ref_features, nullptr);
    reference += b.inputs.size(0);
  }
  const auto labels = at::arange(o.samples, at::kLong).remainder(dit.config.num_classes);
  const auto images = models::sample_images(dit, labels, o.steps, o.cfg, o.solver, o.seed);
  classify(*cnn, ((images.to(at::kFloat) + 1) / 2).clamp(0, 1), &gen_features, &predicted);

  QualityResult r;
  r.frechet = frechet_distance(feature_stats(at::cat(gen_features)), feature_stats(at::cat(ref_features)));
  r.accuracy = at::cat(predicted).eq(labels).to(at::kDouble).mean().item<double>();
  r.samples = o.samples;
  r.reference = reference;
  return r;
}

}  // namespace bitqat::training
