#include "training/task.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>

#include "bitlinear/ops/w158a8_linear.hpp"
#include "core/error.hpp"
#include "data/source.hpp"
#include "models/dit.hpp"
#include "models/factory.hpp"
#include "models/flow.hpp"

namespace bitqat::training {
namespace {

// Token-level language modelling: mean cross-entropy over every position.
class LMTask final : public Task {
 public:
  LMTask(models::ModelHandle handle, bool bytes) : h_(std::move(handle)), bytes_(bytes) {}
  torch::nn::Module& module() override { return *h_.module; }
  std::shared_ptr<torch::nn::Module> module_ptr() override { return h_.module; }
  at::Tensor loss(const data::Batch& b) override { return h_.loss(b.inputs, b.targets); }
  EvalResult evaluate(const std::vector<data::Batch>& batches, const at::Device& device) override {
    at::NoGradGuard no_grad;
    h_.module->eval();
    double total = 0.0;
    int64_t count = 0;
    for (const auto& b : batches) {
      const auto n = b.targets.numel();
      total +=
          h_.loss(b.inputs.to(device), b.targets.to(device)).to(at::kDouble).item<double>() * static_cast<double>(n);
      count += n;
    }
    h_.module->train();
    EvalResult r;
    r.loss = count > 0 ? total / static_cast<double>(count) : std::nan("");
    if (bytes_) {
      r.metric_name = "val_bpb";
      r.metric = r.loss / std::log(2.0);
    }
    return r;
  }
  int64_t units(const data::Batch& b) const override { return b.targets.numel(); }
  const char* unit_name() const override { return "tok"; }

 private:
  models::ModelHandle h_;
  bool bytes_;
};

// Image classification: mean cross-entropy, accuracy on the held-out set.
class ImageTask final : public Task {
 public:
  explicit ImageTask(models::ModelHandle handle) : h_(std::move(handle)) {}
  torch::nn::Module& module() override { return *h_.module; }
  std::shared_ptr<torch::nn::Module> module_ptr() override { return h_.module; }
  at::Tensor loss(const data::Batch& b) override { return h_.loss(b.inputs, b.targets); }
  EvalResult evaluate(const std::vector<data::Batch>& batches, const at::Device& device) override {
    at::NoGradGuard no_grad;
    h_.module->eval();
    double total = 0.0;
    int64_t correct = 0, count = 0;
    for (const auto& b : batches) {
      const auto x = b.inputs.to(device);
      const auto y = b.targets.to(device);
      const auto logits = h_.forward(x);
      const auto n = y.numel();
      total += at::cross_entropy_loss(logits.to(at::kFloat), y).to(at::kDouble).item<double>() * static_cast<double>(n);
      correct += logits.argmax(-1).eq(y).sum().item<int64_t>();
      count += n;
    }
    h_.module->train();
    EvalResult r;
    r.loss = count > 0 ? total / static_cast<double>(count) : std::nan("");
    r.metric_name = "val_acc";
    r.metric = count > 0 ? static_cast<double>(correct) / static_cast<double>(count) : 0.0;
    return r;
  }
  int64_t units(const data::Batch& b) const override { return b.targets.size(0); }
  const char* unit_name() const override { return "samples"; }

 private:
  models::ModelHandle h_;
};

// Class-conditional image generation by flow matching (models/flow.hpp): the DiT predicts the
// velocity x1 - x0 at x_t, with labels dropped to the null label at model.class_dropout. The noise, the
// times and the dropped labels of a sample are functions of the run seed and the sample's global id
// (data::Batch::rows), so a global batch gives the same loss however ranks and micro-batches split it.
// The held-out loss uses other seeds, no label dropout and uniform times (whatever model.time_sampling
// says, so that runs differing in it compare): the same noise and times every evaluation.
class FlowMatchingTask final : public Task {
 public:
  FlowMatchingTask(std::shared_ptr<models::BitDiTImpl> dit, uint64_t seed)
      : dit_(std::move(dit)),
        noise_seed_(data::mix3(seed, kSalt, 1)),
        time_seed_(data::mix3(seed, kSalt, 2)),
        drop_seed_(data::mix3(seed, kSalt, 3)),
        eval_noise_seed_(data::mix3(seed, kSalt, 4)),
        eval_time_seed_(data::mix3(seed, kSalt, 5)) {}
  torch::nn::Module& module() override { return *dit_; }
  std::shared_ptr<torch::nn::Module> module_ptr() override { return dit_; }
  at::Tensor loss(const data::Batch& b) override {
    const auto y =
        models::drop_labels(b.targets, rows_of(b), drop_seed_, dit_->config.class_dropout, dit_->config.null_class());
    const auto& c = dit_->config;
    return loss_with(b, y, noise_seed_,
                     models::sample_times(time_seed_, rows_of(b), c.time_sampling, c.logit_mean, c.logit_std));
  }
  EvalResult evaluate(const std::vector<data::Batch>& batches, const at::Device& device) override {
    at::NoGradGuard no_grad;
    dit_->eval();
    double total = 0.0;
    int64_t count = 0;
    for (const auto& b : batches) {
      const data::Batch d{b.inputs.to(device), b.targets.to(device), b.rows};
      const auto n = b.targets.size(0);
      total += loss_with(d, d.targets, eval_noise_seed_, models::counter_uniform(eval_time_seed_, rows_of(d)))
                   .to(at::kDouble)
                   .item<double>() *
               static_cast<double>(n);
      count += n;
    }
    dit_->train();
    EvalResult r;
    r.loss = count > 0 ? total / static_cast<double>(count) : std::nan("");
    return r;
  }
  int64_t units(const data::Batch& b) const override { return b.targets.size(0); }
  const char* unit_name() const override { return "samples"; }

 private:
  static constexpr uint64_t kSalt = 0x666c6f77;  // "flow"
  static const at::Tensor& rows_of(const data::Batch& b) {
    if (!b.rows.defined()) throw std::logic_error("flow matching: the batch carries no sample ids (Batch::rows)");
    return b.rows;
  }
  // Data in [0, 1] becomes x1 in [-1, 1]; a sample's mean squared velocity error, averaged.
  at::Tensor loss_with(const data::Batch& b, const at::Tensor& labels, uint64_t noise_seed, const at::Tensor& times) {
    const auto& rows = rows_of(b);
    const auto x1 = b.inputs * 2 - 1;
    const auto x0 = models::counter_normal(noise_seed, rows, x1[0].numel()).view(x1.sizes()).to(x1.device());
    const auto t = times.to(x1.device(), at::kFloat);
    const models::VelocityFn v = [&](const at::Tensor& x, const at::Tensor& tt) {
      return dit_->forward(x, tt, labels);
    };
    return models::flow_matching_loss(v, x0, x1, t);
  }

  std::shared_ptr<models::BitDiTImpl> dit_;
  uint64_t noise_seed_, time_seed_, drop_seed_, eval_noise_seed_, eval_time_seed_;
};

}  // namespace

std::unique_ptr<Task> make_task(const Config& cfg, const at::Device& device) {
  const auto& data = cfg.data;
  auto handle = models::make_model(cfg.model, cfg.quant.spec, cfg.quant.include, cfg.quant.exclude, data.vocab());
  handle.module->to(device);
  // On a GPU, fully quantized ternary BitLinears run their forward on the W1.58A8 kernels.
  if (device.is_cuda()) bitlinear::ops::install_training_kernels(*handle.module);
  if (data.data_kind() == data::DataKind::kImages) {
    if (handle.kind == models::ModelKind::kDiT) {
      return std::make_unique<FlowMatchingTask>(std::dynamic_pointer_cast<models::BitDiTImpl>(handle.module),
                                                cfg.run.seed);
    }
    if (handle.kind != models::ModelKind::kCNN) {
      throw core::ConfigError(fmt::format("{} = {}: image data needs model.kind cnn or dit", cfg.model.where("kind"),
                                          models::to_string(handle.kind)));
    }
    return std::make_unique<ImageTask>(std::move(handle));
  }
  if (handle.kind != models::ModelKind::kLM) {
    throw core::ConfigError(fmt::format("{} = {}: token data needs model.kind lm", cfg.model.where("kind"),
                                        models::to_string(handle.kind)));
  }
  return std::make_unique<LMTask>(std::move(handle), data.is_bytes());
}

}  // namespace bitqat::training
