#include "training/task.hpp"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>

#include "bitlinear/ops/w158a8_linear.hpp"
#include "core/error.hpp"
#include "models/factory.hpp"

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

}  // namespace

std::unique_ptr<Task> make_task(const Config& cfg, const at::Device& device) {
  const auto data = data::DataConfig::from_yaml(cfg.data, /*check_files=*/false);
  auto handle = models::make_model(cfg.model, cfg.quant.spec, cfg.quant.include, cfg.quant.exclude, data.vocab());
  handle.module->to(device);
  // On a GPU, fully quantized ternary BitLinears run their forward on the W1.58A8 kernels.
  if (device.is_cuda()) bitlinear::ops::install_training_kernels(*handle.module);
  if (data.data_kind() == data::DataKind::kImages) {
    if (handle.kind != "cnn") {
      throw core::ConfigError(
          fmt::format("{} = {}: image data needs model.kind cnn", cfg.model.where("kind"), handle.kind));
    }
    return std::make_unique<ImageTask>(std::move(handle));
  }
  if (handle.kind != "lm") {
    throw core::ConfigError(
        fmt::format("{} = {}: token data needs model.kind lm", cfg.model.where("kind"), handle.kind));
  }
  return std::make_unique<LMTask>(std::move(handle), data.is_bytes());
}

}  // namespace bitqat::training
