// A model plus what turns a batch into a loss and a validation metric: the language model
// (val_loss, val_bpb for byte data), the image classifier (val_loss, val_acc) or the class-conditional
// image generator (model.kind dit: the flow-matching loss, held out with fixed noise and times).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/source.hpp"
#include "training/config.hpp"

namespace bitqat::training {

struct EvalResult {
  double loss = 0.0;
  std::string metric_name;  // "val_bpb", "val_acc" or "" (token shards: loss only)
  double metric = 0.0;
};

class Task {
 public:
  virtual ~Task() = default;
  virtual torch::nn::Module& module() = 0;
  virtual std::shared_ptr<torch::nn::Module> module_ptr() = 0;
  virtual at::Tensor loss(const data::Batch& batch) = 0;  // mean over the batch
  // Mean loss over all tokens / samples of the batches; no gradients; the module is put back in
  // training mode afterwards.
  virtual EvalResult evaluate(const std::vector<data::Batch>& batches, const at::Device& device) = 0;
  virtual int64_t units(const data::Batch& batch) const = 0;  // tokens or samples in a batch
  virtual const char* unit_name() const = 0;                  // "tok" or "samples"
  // Named parts of the last loss() (detached scalars, e.g. loss_ce and loss_kd), logged beside it.
  virtual std::vector<std::pair<std::string, at::Tensor>> loss_parts() const { return {}; }
  // What a checkpoint's state.json records about the task beyond the model (null: nothing), and the
  // check of that record when a run resumes (a UserError naming `origin` when it no longer holds).
  virtual nlohmann::json checkpoint_state() const { return nullptr; }
  virtual void check_resume(const nlohmann::json& state, const std::string& origin) const {}
};

// Builds the model of `cfg.model` (kind lm, cnn or dit) on `device`, with the quantization policy of
// `cfg.quant`; the vocabulary comes from the data section when the model leaves it out (256 for
// bytes, data.vocab_size for shards, 10 classes). Reads no data file.
std::unique_ptr<Task> make_task(const Config& cfg, const at::Device& device);

}  // namespace bitqat::training
