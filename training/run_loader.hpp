// Opening a finished (or running) run directory: its resolved config, data source, model, and the
// weights of its newest complete checkpoint. Used by eval, generate, quantize and export.
#pragma once
#include <memory>
#include <string>

#include "data/source.hpp"
#include "training/config.hpp"
#include "training/task.hpp"

namespace bitqat::training {

struct LoadedRun {
  Config cfg;
  std::unique_ptr<data::Source> source;
  std::unique_ptr<Task> task;
  std::string checkpoint;  // directory the weights came from
  int64_t step = 0;
};

// Throws UserError when the directory, its config or a complete checkpoint is missing. A packed
// export (training/export_packed.hpp) opens the same way, with its quantized layers packed.
LoadedRun load_run(const std::string& run_dir, const at::Device& device);

}  // namespace bitqat::training
