// Opening a finished (or running) run directory: its resolved config, its model with the weights
// and lambdas of its newest complete checkpoint, the tokenizer of a tokenized language model and,
// only for eval, its validation data. Used by
// eval, generate, quantize and export, none of which reads training data, and all of which work from
// any working directory (config.resolved.yaml holds absolute data paths).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.hpp"
#include "data/source.hpp"
#include "training/config.hpp"
#include "training/task.hpp"

namespace bitqat::training {

struct LoadedRun {
  Config cfg;
  std::unique_ptr<Task> task;
  std::string checkpoint;  // directory the weights came from
  int64_t step = 0;
  // The lambdas the model runs at: those the trainer used for the checkpoint's last step (state.json,
  // or the run's schedules for checkpoints written before bitqat recorded them); 1 for a packed export.
  double lambda_w = 1.0, lambda_a = 1.0;
  // The parameters are the checkpoint's average (train.ema's ema.safetensors), not its raw weights.
  bool ema = false;
  bool ema_in_checkpoint = false;  // the checkpoint holds an average (used or not); never for a packed export
};

// Throws UserError when the directory, its config or a complete checkpoint is missing, or a tensor
// is missing, mis-shaped or not finite. A packed export (interop/export_packed.hpp) opens the same
// way, with its quantized layers packed. Reads no data. When the checkpoint holds an average of the
// parameters (train.ema) the model takes it, unless `use_ema` is false (--no-ema: the raw weights).
LoadedRun load_run(const std::string& run_dir, const at::Device& device, bool use_ema = true);

// Sets the model's lambdas (and LoadedRun's record of them).
void set_run_lambdas(LoadedRun& run, double lambda_w, double lambda_a);

// The text tokenizer of a run trained on token shards: that of its init_from source (a GGUF's
// tokenizer.* keys, a Hugging Face tokenizer.json, or a bitqat run followed to its own init_from;
// interop/gguf_tokenizer.hpp). UserError naming `run_dir` when the run has no init_from or its source
// carries no tokenizer, and naming the source file when that tokenizer is not one bitqat runs.
data::BpeTokenizer run_tokenizer(const LoadedRun& run, const std::string& run_dir);

// The run's validation split (only that is read). `data_sets` are --set overrides of data.* keys that
// point at data that has moved; when the data is missing the error names the path and the override.
std::unique_ptr<data::Source> open_validation_data(const LoadedRun& run, const std::vector<std::string>& data_sets);

}  // namespace bitqat::training
