#include "training/config.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <functional>

#include "bitlinear/quant_config.hpp"
#include "checkpoints/checkpoint.hpp"
#include "data/source.hpp"
#include "models/dit.hpp"
#include "models/factory.hpp"
#include "models/lm.hpp"
#include "schedules/schedule.hpp"

namespace bitqat::training {
namespace {

void parse_run(const core::Node& n, RunConfig* c) {
  n.allow_only({"name", "dir", "seed"});
  c->name = n.get<std::string>("name", c->name);
  if (c->name.empty() || c->name.find('/') != std::string::npos) n.fail("name", "a non-empty name without '/'");
  c->dir = n.get<std::string>("dir", c->dir);
  if (c->dir.empty()) n.fail("dir", "a directory path");
  c->seed = static_cast<uint64_t>(n.get_in<int64_t>("seed", static_cast<int64_t>(c->seed), 0, INT64_MAX));
}

void parse_train(const core::Node& n, TrainLoopConfig* c) {
  n.allow_only({"steps", "batch_size", "grad_accum", "log_every", "eval_every", "eval_at_start", "eval_batches",
                "max_bad_steps"});
  c->steps = n.get_in<int64_t>("steps", c->steps, 1, checkpoints::kMaxStep);
  c->batch_size = n.get_in<int64_t>("batch_size", c->batch_size, 1, 1 << 20);
  c->grad_accum = n.get_in<int>("grad_accum", c->grad_accum, 1, 1 << 16);
  c->log_every = n.get_in<int>("log_every", c->log_every, 1, 1 << 30);
  c->eval_every = n.get_in<int>("eval_every", c->eval_every, 0, 1 << 30);
  c->eval_at_start = n.get<bool>("eval_at_start", c->eval_at_start);
  c->eval_batches = n.get_in<int>("eval_batches", c->eval_batches, 1, 1 << 20);
  c->max_bad_steps = n.get_in<int>("max_bad_steps", c->max_bad_steps, 1, 1 << 20);
}

void parse_optim(const core::Node& n, OptimConfig* c) {
  n.allow_only({"beta1", "beta2", "eps", "grad_clip", "lr", "weight_decay"});
  c->beta1 = n.get_in<double>("beta1", c->beta1, 0.0, 0.999999);
  c->beta2 = n.get_in<double>("beta2", c->beta2, 0.0, 0.99999999);
  c->eps = n.get_in<double>("eps", c->eps, 1e-30, 1.0);
  c->grad_clip = n.get_in<double>("grad_clip", c->grad_clip, 0.0, 1e9);
  c->lr = n.child("lr");
  c->weight_decay = n.child("weight_decay");
}

void parse_quant(const core::Node& n, QuantConfig* c) {
  n.allow_only({"weight", "activation", "include", "exclude", "lambda_w", "lambda_a"});
  c->spec = bitlinear::quant_spec_from_yaml(n);
  c->include = n.get_strings("include", c->include);
  c->exclude = n.get_strings("exclude", c->exclude);
  c->lambda_w = n.child("lambda_w");
  c->lambda_a = n.child("lambda_a");
}

void parse_checkpoint(const core::Node& n, CheckpointConfig* c) {
  n.allow_only({"every", "keep_last"});
  c->every = n.get_in<int64_t>("every", c->every, 0, int64_t{1} << 40);
  c->keep_last = n.get_in<int>("keep_last", c->keep_last, 0, 1 << 20);
}

void parse_device(const core::Node& n, DeviceConfig* c) {
  n.allow_only({"type", "precision", "threads"});
  c->type = n.get_choice("type", c->type, {"auto", "cpu", "cuda"});
  c->precision = n.get_choice("precision", c->precision, {"auto", "fp32", "bf16"});
  c->threads = n.get_in<int>("threads", c->threads, 0, 1024);
}

void parse_dist(const core::Node& n, DistConfig* c) {
  n.allow_only({"backend", "timeout_s", "bucket_mb", "overlap"});
  c->backend = n.get_choice("backend", c->backend, {"auto", "nccl", "gloo"});
  c->timeout_s = n.get_in<int>("timeout_s", c->timeout_s, 1, 86400);
  c->bucket_mb = n.get_in<double>("bucket_mb", c->bucket_mb, 0.001, 4096.0);
  c->overlap = n.get<bool>("overlap", c->overlap);
}

// The distill: section; its cross-checks with the model and init_from are in from_node.
void parse_distill(const core::Node& n, bool check_files, DistillConfig* c) {
  c->node = n;
  if (!n.defined()) return;
  n.allow_only({"enabled", "teacher", "alpha", "temperature", "hidden"});
  c->enabled = n.get<bool>("enabled", true);
  c->teacher = n.get<std::string>("teacher", "");
  c->alpha = n.get_in<double>("alpha", c->alpha, 0.0, 1.0);
  c->temperature = n.get_in<double>("temperature", c->temperature, 1e-3, 1e3);
  if (check_files && c->enabled && !c->teacher.empty() && !std::filesystem::exists(c->teacher)) {
    n.fail("teacher", "an existing model path (a GGUF, a Hugging Face directory or a bitqat run or checkpoint)");
  }
  const auto h = n.child("hidden");
  if (h.defined()) {
    h.allow_only({"layers", "weight"});
    for (double l : h.get_doubles("layers")) {
      if (l != static_cast<double>(static_cast<int64_t>(l)) || l < 0) {
        h.fail("layers", "a list of block indices (integers >= 0)");
      }
      c->hidden_layers.push_back(static_cast<int64_t>(l));
    }
    c->hidden_weight = h.get_in<double>("weight", c->hidden_weight, 0.0, 1e6);
  }
}

// Schedules are built once here only to validate them (with train.steps known); the trainer builds
// its own copies.
void validate_schedule(const core::Node& n, schedules::ScheduleRole role, int64_t steps) {
  if (n.defined()) schedules::make_schedule(n, role, steps);
}

// A diffusion transformer generates the data's images: the same shape and classes.
void check_dit_data(const core::Node& model, const data::DataConfig& data) {
  if (data.data_kind() != data::DataKind::kImages) {
    throw core::ConfigError(fmt::format("{} = dit: a diffusion transformer needs image data, got data.kind {}",
                                        model.where("kind"), data.kind));
  }
  const auto dit = models::DiTConfig::from_yaml(model);
  const auto shape = data.image_shape();
  const std::vector<std::pair<const char*, int64_t>> have = {
      {"channels", dit.channels}, {"height", dit.height}, {"width", dit.width}};
  for (size_t i = 0; i < have.size(); ++i) {
    if (have[i].second != shape[i]) {
      throw core::ConfigError(fmt::format("{} = {}: data.kind {} has images of {} x {} x {} (channels x height x width)",
                                          model.where(have[i].first), have[i].second, data.kind, shape[0], shape[1],
                                          shape[2]));
    }
  }
  if (dit.num_classes != data.vocab()) {
    throw core::ConfigError(fmt::format("{} = {}: expected the data's {} classes", model.where("num_classes"),
                                        dit.num_classes, data.vocab()));
  }
}

}  // namespace

Config Config::load_file(const std::string& file, const std::vector<std::string>& overrides, bool check_files) {
  auto c = from_node(core::Node::load_file(file, overrides), check_files);
  c.file = file;
  return c;
}

Config Config::load_string(const std::string& text, const std::string& name, const std::vector<std::string>& overrides,
                           bool check_files) {
  auto c = from_node(core::Node::load_string(text, name, overrides), check_files);
  c.file = name;
  return c;
}

Config Config::from_node(const core::Node& root, bool check_files) {
  Config c;
  c.root = root;
  root.allow_only(
      {"run", "model", "quant", "data", "optim", "train", "checkpoint", "device", "dist", "init_from", "distill"});
  parse_run(root.child("run"), &c.run);
  parse_train(root.child("train"), &c.train);
  parse_optim(root.child("optim"), &c.optim);
  parse_quant(root.child("quant"), &c.quant);
  parse_checkpoint(root.child("checkpoint"), &c.checkpoint);
  parse_device(root.child("device"), &c.device);
  parse_dist(root.child("dist"), &c.dist);
  c.model = root.child("model");
  c.data = root.child("data");
  c.init_from = root.get<std::string>("init_from", "");
  parse_distill(root.child("distill"), check_files, &c.distill);
  if (!c.model.defined()) throw core::ConfigError(fmt::format("{}: the config needs a model: section", root.where()));
  if (!c.data.defined()) throw core::ConfigError(fmt::format("{}: the config needs a data: section", root.where()));

  // Validate every section now, before any model, data or device work.
  models::validate_model_config(c.model);
  const auto data = data::DataConfig::from_yaml(c.data, check_files);
  if (c.model.get<std::string>("kind", "lm") == "lm" && data.data_kind() == data::DataKind::kTokens) {
    const auto lm = models::LMConfig::from_yaml(c.model);
    if (data.seq_len > lm.max_seq_len) {
      throw core::ConfigError(fmt::format(
          "{} exceeds {} = {}: training windows longer than the model's context would train positions the model "
          "(and its exports) do not have; lower data.seq_len or raise model.max_seq_len",
          c.data.describe("seq_len"), c.model.where("max_seq_len"), lm.max_seq_len));
    }
  }
  if (c.model.get<std::string>("kind", "lm") == "dit") check_dit_data(c.model, data);
  if (c.distill.enabled) {
    const auto& d = c.distill.node;
    if (c.model.get<std::string>("kind", "lm") != "lm" || data.data_kind() != data::DataKind::kTokens) {
      throw core::ConfigError(
          fmt::format("{}: distillation is for language models (model.kind lm on token data)", d.where()));
    }
    if (c.distill.teacher.empty() && c.init_from.empty()) {
      throw core::ConfigError(fmt::format(
          "{}: no teacher: set distill.teacher to a model path, or init_from (the default teacher)", d.where()));
    }
    const auto lm = models::LMConfig::from_yaml(c.model);
    for (auto l : c.distill.hidden_layers) {
      if (l >= lm.n_layers) {
        throw core::ConfigError(fmt::format("{} holds block {}, but the model has {} blocks (0 to {})",
                                            d.child("hidden").where("layers"), l, lm.n_layers, lm.n_layers - 1));
      }
    }
  }
  validate_schedule(c.optim.lr, schedules::ScheduleRole::kLearningRate, c.train.steps);
  validate_schedule(c.optim.weight_decay, schedules::ScheduleRole::kWeightDecay, c.train.steps);
  validate_schedule(c.quant.lambda_w, schedules::ScheduleRole::kLambda, c.train.steps);
  validate_schedule(c.quant.lambda_a, schedules::ScheduleRole::kLambda, c.train.steps);
  return c;
}

YAML::Node Config::resolved() const {
  YAML::Node out = YAML::Clone(root.yaml());
  const auto dc = data::DataConfig::from_yaml(data, /*check_files=*/false);
  dc.write_absolute_paths(out["data"]);
  if (model.get<std::string>("kind", "lm") == "lm" && model.get<int64_t>("vocab_size", 0) == 0) {
    out["model"]["vocab_size"] = dc.vocab();
  }
  if (!init_from.empty()) out["init_from"] = std::filesystem::absolute(init_from).lexically_normal().string();
  if (distill.node.defined()) {
    auto d = out["distill"];
    d["enabled"] = distill.enabled;
    if (!distill.teacher.empty()) d["teacher"] = std::filesystem::absolute(distill.teacher).lexically_normal().string();
    d["alpha"] = distill.alpha;
    d["temperature"] = distill.temperature;
  }
  out["run"]["name"] = run.name;
  out["run"]["dir"] = run.dir;
  out["run"]["seed"] = run.seed;
  auto t = out["train"];
  t["steps"] = train.steps;
  t["batch_size"] = train.batch_size;
  t["grad_accum"] = train.grad_accum;
  t["log_every"] = train.log_every;
  t["eval_every"] = train.eval_every;
  t["eval_at_start"] = train.eval_at_start;
  t["eval_batches"] = train.eval_batches;
  t["max_bad_steps"] = train.max_bad_steps;
  auto o = out["optim"];
  o["beta1"] = optim.beta1;
  o["beta2"] = optim.beta2;
  o["eps"] = optim.eps;
  o["grad_clip"] = optim.grad_clip;
  auto q = out["quant"];
  YAML::Node qs;
  bitlinear::quant_spec_to_yaml(quant.spec, &qs);
  q["weight"] = qs["weight"];
  q["activation"] = qs["activation"];
  q["include"] = quant.include;
  q["exclude"] = quant.exclude;
  out["checkpoint"]["every"] = checkpoint.every;
  out["checkpoint"]["keep_last"] = checkpoint.keep_last;
  out["device"]["type"] = device.type;
  out["device"]["precision"] = device.precision;
  out["device"]["threads"] = device.threads;
  out["dist"]["backend"] = dist.backend;
  out["dist"]["timeout_s"] = dist.timeout_s;
  out["dist"]["bucket_mb"] = dist.bucket_mb;
  out["dist"]["overlap"] = dist.overlap;
  return out;
}

namespace {
// FNV-1a 64: stable across platforms and runs (std::hash is not).
std::string fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}
}  // namespace

std::string Config::compat_hash() const {
  YAML::Node q;
  bitlinear::quant_spec_to_yaml(quant.spec, &q);
  q["include"] = quant.include;
  q["exclude"] = quant.exclude;
  const auto vocab = data::DataConfig::from_yaml(data, /*check_files=*/false).vocab();
  return fnv1a("bitqat-compat-v2\n" + models::model_identity(model, vocab) + "\n" + core::to_yaml_string(q));
}

std::string Config::legacy_compat_hash() const {
  YAML::Node key;
  key["model"] = YAML::Clone(model.yaml());
  YAML::Node qs;
  bitlinear::quant_spec_to_yaml(quant.spec, &qs);
  key["quant"] = qs;
  key["include"] = quant.include;
  key["exclude"] = quant.exclude;
  return fnv1a(core::to_yaml_string(key));
}

}  // namespace bitqat::training
