#include "training/run_loader.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <map>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/export_packed.hpp"
#include "interop/gguf_tokenizer.hpp"
#include "models/state_dict.hpp"
#include "schedules/schedule.hpp"
#include "training/ema.hpp"

namespace bitqat::training {
namespace {

// The lambda of `node`'s schedule at `step`.
double scheduled_lambda(const core::Node& node, int64_t steps, int64_t step) {
  return schedules::make_schedule(node, schedules::ScheduleRole::kLambda, steps)->at(step);
}

double state_lambda(const nlohmann::json& state, const char* key, const std::string& origin, double fallback) {
  if (!state.contains(key)) return fallback;
  const auto& v = state[key];
  if (!v.is_number() || !(v.get<double>() >= 0.0 && v.get<double>() <= 1.0)) {
    throw core::UserError(fmt::format("{}: {} = {}: expected a number in [0, 1]", origin, key, v.dump()));
  }
  return v.get<double>();
}

}  // namespace

void set_run_lambdas(LoadedRun& run, double lambda_w, double lambda_a) {
  bitlinear::set_quant_lambdas(run.task->module(), lambda_w, lambda_a);
  run.lambda_w = lambda_w;
  run.lambda_a = lambda_a;
}

LoadedRun load_run(const std::string& run_dir, const at::Device& device, bool use_ema) {
  if (interop::is_packed_export(run_dir)) {
    auto e = interop::read_packed_export(run_dir);
    LoadedRun run{Config::load_string(e.config_yaml, run_dir + "/config.resolved.yaml", {}, /*check_files=*/false),
                  nullptr, run_dir, e.step};
    run.task = make_task(run.cfg, device);
    interop::load_packed_weights(run.task->module(), e);
    return run;  // packed layers run at lambda 1
  }
  const std::string cfg_path = run_dir + "/config.resolved.yaml";
  if (!std::filesystem::exists(cfg_path)) {
    throw core::UserError(fmt::format("{}: not a bitqat run directory ({} is missing)", run_dir, cfg_path));
  }
  LoadedRun run{Config::load_file(cfg_path, {}, /*check_files=*/false), nullptr, "", 0};
  const auto latest = checkpoints::find_latest_checkpoint(run_dir + "/checkpoints");
  if (!latest) {
    throw core::UserError(fmt::format("{}: no complete checkpoint under {}/checkpoints", run_dir, run_dir));
  }
  run.task = make_task(run.cfg, device);
  const auto ck = checkpoints::read_checkpoint(*latest);
  std::map<std::string, at::Tensor> tensors(ck.model.begin(), ck.model.end());
  models::load_model_tensors(run.task->module(), tensors, *latest + "/model.safetensors");
  run.ema_in_checkpoint = ck.has_ema;
  if (use_ema && ck.has_ema) {
    // The average covers exactly the trainable parameters (training/ema.hpp); buffers stay the run's.
    const std::string origin = *latest + "/ema.safetensors";
    std::map<std::string, at::Tensor> ema(ck.ema.begin(), ck.ema.end());
    std::vector<std::string> params;
    for (const auto& item : run.task->module().named_parameters(true)) {
      if (item.value().requires_grad()) params.push_back(item.key());
    }
    check_average_names(params, ema, origin);
    models::load_model_tensors(run.task->module(), ema, origin, /*strict=*/false);
    run.ema = true;
  }
  run.checkpoint = *latest;
  run.step = ck.step;
  // The trainer's step s runs at the schedules' value for s; a checkpoint at step s was trained last
  // at s - 1 (and evaluated with those lambdas).
  const int64_t last = std::max<int64_t>(ck.step - 1, 0);
  const std::string origin = *latest + "/state.json";
  const double lw =
      state_lambda(ck.state, "lambda_w", origin, scheduled_lambda(run.cfg.quant.lambda_w, run.cfg.train.steps, last));
  const double la =
      state_lambda(ck.state, "lambda_a", origin, scheduled_lambda(run.cfg.quant.lambda_a, run.cfg.train.steps, last));
  set_run_lambdas(run, lw, la);
  return run;
}

data::BpeTokenizer run_tokenizer(const LoadedRun& run, const std::string& run_dir) {
  const auto& source = run.cfg.init_from;
  const int64_t vocab = run.cfg.data.vocab();
  if (source.empty()) {
    throw core::UserError(fmt::format(
        "{}: this run was trained on token ids (data.kind {}, vocabulary {}) from scratch: it has no init_from, so "
        "bitqat has no tokenizer for its text (one comes from the init_from model: a GGUF, a Hugging Face directory "
        "with tokenizer.json, or a bitqat run started from one)",
        run_dir, data::to_string(run.cfg.data.kind), vocab));
  }
  if (!std::filesystem::exists(source)) {
    throw core::UserError(fmt::format(
        "{}: init_from = {} does not exist (moved or deleted?): a tokenized run's tokenizer comes from it; put it "
        "back, or point init_from in {}/config.resolved.yaml at where it is now",
        run_dir, source, run_dir));
  }
  auto t = interop::source_bpe_tokenizer(source, vocab);
  if (!t) {
    throw core::UserError(fmt::format(
        "{}: init_from = {} carries no tokenizer (expected a GGUF with tokenizer.* keys, a Hugging Face directory "
        "with tokenizer.json, or a bitqat run started from one)",
        run_dir, source));
  }
  return std::move(*t);
}

std::unique_ptr<data::Source> open_validation_data(const LoadedRun& run, const std::vector<std::string>& data_sets) {
  for (const auto& s : data_sets) {
    if (s.rfind("data.", 0) != 0) {
      throw core::UserError(
          fmt::format("--set {}: only data.* keys can be overridden here (where the validation "
                      "data is); the model and its quantization are the checkpoint's",
                      s));
    }
  }
  auto root = run.cfg.root;
  if (!data_sets.empty()) {
    root = core::Node::load_string(core::to_yaml_string(run.cfg.root.yaml()), run.cfg.file, data_sets);
  }
  try {
    return data::make_source(data::DataConfig::from_yaml(root.child("data")), run.cfg.run.seed,
                             data::Split::kValidation);
  } catch (const core::UserError& e) {
    throw core::UserError(
        fmt::format("{} (the validation split is read from the run's data; if it has moved, point at it with --set "
                    "data.path=... for text, data.train / data.val for shards, data.dir for Fashion-MNIST)",
                    e.what()));
  }
}

}  // namespace bitqat::training
