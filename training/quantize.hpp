// Data-free ternarization (`bitqat quantize`): a full-precision run's newest checkpoint (or the
// init_from model of a training config, e.g. a GGUF) becomes a ternary run without training: the
// same model and weights with absmean ternary weights, 8-bit per-token activations and lambda = 1.
// The baseline that progressive fine-tuning must beat.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "training/task.hpp"

namespace bitqat::training {

struct QuantizeResult {
  std::string out_dir;
  std::string checkpoint;         // the checkpoint written under out_dir
  std::string source_checkpoint;  // the checkpoint the weights came from
  int64_t source_step = 0;
  std::vector<std::string> quantized_layers;
  EvalResult eval;  // validation loss of the ternary model (train.eval_batches batches)
};

// SRC is a run directory, or a config file (YAML) whose init_from holds the full-precision model;
// its model, data and settings are the config's, its distill: section is dropped.
// Writes OUT_RUN_DIR as a complete run directory (config.resolved.yaml, metrics.jsonl with the
// validation loss, checkpoints/step_00000000 with a fresh optimizer state) that `bitqat eval`,
// `bitqat train --resume` and `init_from` accept. `sets` (--set k.p=v) apply on top of the
// ternary quant section, e.g. quant.weight.granularity=per_channel. An OUT_RUN_DIR that already
// holds checkpoints is refused. A source run whose checkpoint holds an average of its weights
// (train.ema) is quantized from the average unless `use_ema` is false.
QuantizeResult quantize_run(const std::string& src_run_dir, const std::string& out_run_dir,
                            const std::vector<std::string>& sets, const at::Device& device, bool use_ema = true);

}  // namespace bitqat::training
