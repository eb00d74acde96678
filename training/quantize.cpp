#include "training/quantize.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "bitlinear/convert.hpp"
#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/init_source.hpp"
#include "models/state_dict.hpp"
#include "training/optimizer.hpp"
#include "training/run_loader.hpp"
#include "training/run_state.hpp"

namespace bitqat::training {
namespace {

namespace fs = std::filesystem;

// BitNet b1.58's numerics: absmean ternary weights per tensor, 8-bit absmax activations per token.
YAML::Node ternary_quant(const YAML::Node& source_quant) {
  YAML::Node q = YAML::Clone(source_quant);
  YAML::Node w;
  w["type"] = "ternary";
  w["granularity"] = "per_tensor";
  w["estimator"] = "identity";
  YAML::Node a;
  a["type"] = "per_token";
  a["bits"] = 8;
  YAML::Node one;
  one["kind"] = "constant";
  one["value"] = 1.0;
  q["weight"] = w;
  q["activation"] = a;
  q["lambda_w"] = one;
  q["lambda_a"] = YAML::Clone(one);
  return q;
}

// The source: a run's newest checkpoint, or a config's init_from model read into the config's model.
// A config is loaded with the overrides, so that --set can also fix what its validation checks
// (e.g. a data path that is elsewhere on this machine).
LoadedRun load_source(const std::string& src, const std::vector<std::string>& sets, const at::Device& device,
                      bool use_ema) {
  if (!fs::exists(src)) {
    throw core::UserError(fmt::format("{}: no such run directory or config file", src));
  }
  if (!fs::is_regular_file(src)) return load_run(src, device, use_ema);
  LoadedRun run{Config::load_file(src, sets), nullptr, "", 0};
  if (run.cfg.init_from.empty()) {
    throw core::UserError(fmt::format(
        "{}: a config given to quantize needs init_from (the full-precision model to ternarize); or give a run "
        "directory",
        src));
  }
  run.task = make_task(run.cfg, device);
  interop::init_model_from(run.cfg.init_from, run.task->module(), run.cfg.root.where("init_from"));
  run.checkpoint = run.cfg.init_from;
  return run;
}

}  // namespace

QuantizeResult quantize_run(const std::string& src_run_dir, const std::string& out_run_dir,
                            const std::vector<std::string>& sets, const at::Device& device, bool use_ema) {
  if (out_run_dir.empty()) throw core::UserError("--out: expected the run directory to write");
  fs::path out = fs::path(out_run_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // a trailing '/'
  if (out.filename().empty() || out.filename() == "." || out.filename() == "..") {
    throw core::UserError(fmt::format("--out {}: expected a run directory path ending in its name", out_run_dir));
  }
  if (fs::exists(out) && fs::exists(src_run_dir) && fs::equivalent(out, src_run_dir)) {
    throw core::UserError(fmt::format("--out {} is the source run itself; choose a new directory", out_run_dir));
  }
  if (const auto latest = checkpoints::find_latest_checkpoint((out / "checkpoints").string())) {
    throw core::UserError(
        fmt::format("--out {} already holds checkpoints (newest: {}); choose another directory", out_run_dir, *latest));
  }

  auto src = load_source(src_run_dir, sets, device, use_ema);
  YAML::Node doc = YAML::Clone(src.cfg.root.yaml());
  doc["quant"] = ternary_quant(doc["quant"]);
  doc["run"]["dir"] = out.has_parent_path() ? out.parent_path().string() : std::string(".");
  doc["run"]["name"] = out.filename().string();
  // Where the weights came from: the source run, or the config's model (a GGUF, a Hugging Face
  // directory). It is read only by a fresh run, never on resume; what follows it is what the source
  // carries, e.g. its tokenizer for generate and the GGUF export.
  doc["init_from"] = fs::is_regular_file(src_run_dir) ? src.cfg.init_from : fs::absolute(src_run_dir).string();
  doc.remove("distill");    // no training, no teacher
  const auto cfg = Config::load_string(core::to_yaml_string(doc),
                                       fmt::format("<quantize of {}/config.resolved.yaml>", src_run_dir), sets);

  if (cfg.device.threads > 0) at::set_num_threads(cfg.device.threads);  // as the trainer does

  // The same model with the ternary quantization, holding the source's latent weights.
  auto task = make_task(cfg, device);
  auto& model = task->module();
  const auto weights = models::model_tensors(src.task->module());
  models::load_initial_tensors(model, models::lazy_tensors(std::map<std::string, at::Tensor>(weights.begin(), weights.end())),
                               src.checkpoint + "/model.safetensors");
  bitlinear::set_quant_lambdas(model, 1.0, 1.0);

  QuantizeResult r;
  r.out_dir = out.string();
  r.source_checkpoint = src.checkpoint;
  r.source_step = src.step;
  r.quantized_layers = bitlinear::quantized_layer_names(model);
  if (r.quantized_layers.empty()) {
    throw core::UserError(
        fmt::format("{}: quant.include / quant.exclude select no layer of the model, so nothing would be quantized",
                    cfg.root.child("quant").where("include")));
  }
  spdlog::info("quantize: {} layer(s) {} ({}) with lambda 1: {}", r.quantized_layers.size(),
               bitlinear::to_string(cfg.quant.spec.weight.type),
               bitlinear::to_string(cfg.quant.spec.weight.granularity), fmt::join(r.quantized_layers, ", "));
  const auto val = open_validation_data(src, {})->val_batches(cfg.train.batch_size, cfg.train.eval_batches);
  r.eval = task->evaluate(val, device);

  // A complete run directory: resumable (fresh optimizer state at step 0) and readable by eval.
  fs::create_directories(out);
  core::write_file_atomic((out / "config.resolved.yaml").string(), core::to_yaml_string(cfg.resolved()));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model.named_parameters(true)) {
    if (item.value().requires_grad()) named.emplace_back(item.key(), item.value());
  }
  const AdamW fresh(named, AdamWOptions{cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps});
  const nlohmann::json from = {{"run_dir", src_run_dir}, {"checkpoint", src.checkpoint}, {"step", src.step}};
  checkpoints::CheckpointData ck;
  ck.step = 0;
  ck.model = models::model_tensors(model);
  ck.optimizer = fresh.state_tensors();
  ck.extra = rng_states();
  ck.state = {{"step", 0},
              {"config_hash", cfg.compat_hash()},
              {"global_batch", cfg.train.batch_size * cfg.train.grad_accum},
              {"world_size", 1},
              {"bad_streak", 0},
              {"lambda_w", 1.0},
              {"lambda_a", 1.0},
              {"data", {{"kind", data::to_string(cfg.data.kind)}, {"samples_seen", 0}}},
              {"quantized_from", from}};
  r.checkpoint = checkpoints::write_checkpoint((out / "checkpoints").string(), ck, cfg.checkpoint.keep_last);

  nlohmann::json rec = {{"step", 0}, {"val_loss", r.eval.loss}, {"quantized_from", from}};
  if (!r.eval.metric_name.empty()) rec[r.eval.metric_name] = r.eval.metric;
  core::write_file_atomic((out / "metrics.jsonl").string(), rec.dump() + "\n");
  spdlog::info("quantize: {} (step {}) -> {}: val_loss {:.4f}", src.checkpoint, src.step, r.checkpoint, r.eval.loss);
  return r;
}

}  // namespace bitqat::training
