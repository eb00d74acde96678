#include "training/run_loader.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <map>

#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "training/export_packed.hpp"
#include "training/run_state.hpp"

namespace bitqat::training {

LoadedRun load_run(const std::string& run_dir, const at::Device& device) {
  if (is_packed_export(run_dir)) return load_packed_export(run_dir, device);
  const std::string cfg_path = run_dir + "/config.resolved.yaml";
  if (!std::filesystem::exists(cfg_path)) {
    throw core::UserError(fmt::format("{}: not a bitqat run directory ({} is missing)", run_dir, cfg_path));
  }
  LoadedRun run{Config::load_file(cfg_path), nullptr, nullptr, "", 0};
  const auto latest = checkpoints::find_latest_checkpoint(run_dir + "/checkpoints");
  if (!latest) {
    throw core::UserError(fmt::format("{}: no complete checkpoint under {}/checkpoints", run_dir, run_dir));
  }
  run.source = data::make_source(data::DataConfig::from_yaml(run.cfg.data), run.cfg.run.seed);
  run.task = make_task(run.cfg, *run.source, device);
  const auto ck = checkpoints::read_checkpoint(*latest);
  std::map<std::string, at::Tensor> tensors(ck.model.begin(), ck.model.end());
  load_model_tensors(run.task->module(), tensors, *latest + "/model.safetensors");
  run.checkpoint = *latest;
  run.step = ck.step;
  return run;
}

}  // namespace bitqat::training
