#include "training/config.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <functional>
#include <set>

#include "bitlinear/quant_config.hpp"
#include "checkpoints/checkpoint.hpp"
#include "data/source.hpp"
#include "models/dit.hpp"
#include "models/factory.hpp"
#include "models/lm.hpp"
#include "schedules/schedule.hpp"

namespace bitqat::training {
namespace {

// ---- the sections, each declared once ---------------------------------------------------------------

const core::Schema<RunConfig>& run_schema() {
  using C = RunConfig;
  static const core::Schema<RunConfig> s({
      core::key("name", &C::name, "the run's name: its directory is dir/name")
          .check([](const std::string& v) { return !v.empty() && v.find('/') == std::string::npos; },
                 "a non-empty name without '/'"),
      core::key("dir", &C::dir, "the directory that holds runs")
          .check([](const std::string& v) { return !v.empty(); }, "a directory path"),
      core::key("seed", &C::seed, "seeds the initialisation, the data order and every other random draw")
          .range(0, static_cast<uint64_t>(INT64_MAX)),
  });
  return s;
}

const core::Schema<TrainLoopConfig>& train_schema() {
  using C = TrainLoopConfig;
  static const core::Schema<TrainLoopConfig> s({
      core::key("steps", &C::steps, "optimizer steps of the run").range(1, checkpoints::kMaxStep),
      core::key("batch_size", &C::batch_size, "sequences (or images) per process per micro-step").range(1, 1 << 20),
      core::key("grad_accum", &C::grad_accum, "micro-steps per optimizer step").range(1, 1 << 16),
      core::key("log_every", &C::log_every, "steps between log lines").range(1, 1 << 30),
      core::key("eval_every", &C::eval_every, "steps between evaluations; 0: only at the end").range(0, 1 << 30),
      core::key("eval_at_start", &C::eval_at_start, "also evaluate a fresh run before its first step"),
      core::key("eval_batches", &C::eval_batches, "validation batches per evaluation").range(1, 1 << 20),
      core::key("max_bad_steps", &C::max_bad_steps, "consecutive non-finite steps before the run stops")
          .range(1, 1 << 20),
      core::key("activation_checkpointing", &C::activation_checkpointing,
                "transformer blocks recomputed in the backward pass instead of keeping their activations (less "
                "memory, one more forward of those blocks; the same losses and gradients): none, full (every "
                "block) or {every_n: N} (the blocks whose index % N == 0: 0, N, 2N, ...); lm and dit models (refused "
                "for a cnn, which has no blocks); dist.shard parameters recomputes every block whatever this says"),
  });
  return s;
}

const core::Schema<EmaConfig>& ema_schema() {
  using C = EmaConfig;
  static const core::Schema<EmaConfig> s({
      core::key("enabled", &C::enabled, "keep the average (true when the section is given)").fallback("true"),
      core::key("decay", &C::decay, "ema <- decay * ema + (1 - decay) * parameters after each update")
          .check([](double d) { return d > 0.0 && d < 1.0; }, "a number in (0, 1)"),
      core::key("start_step", &C::start_step, "the average starts here; before, it is the parameters themselves")
          .range(0, checkpoints::kMaxStep),
  });
  return s;
}

const core::Schema<OptimConfig>& optim_schema() {
  using C = OptimConfig;
  static const core::Schema<OptimConfig> s({
      core::key("beta1", &C::beta1, "AdamW's first-moment decay").range(0.0, 0.999999),
      core::key("beta2", &C::beta2, "AdamW's second-moment decay").range(0.0, 0.99999999),
      core::key("eps", &C::eps, "AdamW's epsilon").range(1e-30, 1.0),
      core::key("grad_clip", &C::grad_clip, "global gradient-norm clip; 0: off").range(0.0, 1e9),
      core::key("lr", &C::lr, "the learning-rate schedule (kind constant, cosine, two_stage, ...)").type("schedule"),
      core::key("weight_decay", &C::weight_decay, "the weight-decay schedule (kind constant or two_stage)")
          .type("schedule"),
  });
  return s;
}

// quant.weight and quant.activation are bitlinear's (bitlinear/quant_config.hpp).
const core::Schema<QuantConfig>& quant_schema() {
  using C = QuantConfig;
  static const core::Schema<QuantConfig> s({
      core::key("include", &C::include, "glob patterns of the module names to quantize"),
      core::key("exclude", &C::exclude, "glob patterns of module names left full precision"),
      core::key("lambda_w", &C::lambda_w, "the weight quantization ramp lambda over the steps").type("schedule"),
      core::key("lambda_a", &C::lambda_a, "the activation quantization ramp lambda over the steps").type("schedule"),
  });
  return s;
}
const std::set<std::string> kQuantSpecKeys = {"weight", "activation"};

const core::Schema<CheckpointConfig>& checkpoint_schema() {
  using C = CheckpointConfig;
  static const core::Schema<CheckpointConfig> s({
      core::key("every", &C::every, "steps between checkpoints; 0: only the final one").range(0, int64_t{1} << 40),
      core::key("keep_last", &C::keep_last, "checkpoints kept (older ones are deleted); 0: all").range(0, 1 << 20),
  });
  return s;
}

const core::Schema<LogConfig>& log_schema() {
  using C = LogConfig;
  static const core::Schema<LogConfig> s({
      core::key("tensorboard", &C::tensorboard,
                "also write the logged metrics as TensorBoard event files in the run directory (rank 0)"),
  });
  return s;
}

const core::Schema<DeviceConfig>& device_schema() {
  using C = DeviceConfig;
  static const core::Schema<DeviceConfig> s({
      core::key("type", &C::type, "where to train; auto: a GPU when one is visible").choices(kDeviceTypeNames),
      core::key("precision", &C::precision, "auto: bf16 autocast on a GPU, fp32 on the CPU").choices(kPrecisionNames),
      core::key("threads", &C::threads, "CPU intra-op threads; 0: LibTorch's default").range(0, 1024),
      core::key("memory_gb", &C::memory_gb,
                "memory of one device in GiB that bitqat plan and the trainer check a config against; 0: the "
                "GPU's, or the machine's RAM on the CPU")
          .range(0.0, 1e6),
  });
  return s;
}

const core::Schema<DistConfig>& dist_schema() {
  using C = DistConfig;
  static const core::Schema<DistConfig> s({
      core::key("backend", &C::backend, "the c10d process group; auto: NCCL on GPUs, Gloo on the CPU")
          .choices(kBackendNames),
      core::key("timeout_s", &C::timeout_s, "seconds a collective may wait before the run fails").range(1, 86400),
      core::key("bucket_mb", &C::bucket_mb, "gradient bucket size for the all-reduce, MiB").range(0.001, 4096.0),
      core::key("overlap", &C::overlap, "all-reduce each bucket while the backward pass goes on"),
      core::key("shard", &C::shard,
                "what ranks shard instead of replicating (ZeRO stages 1-3): none, optimizer (the AdamW state), "
                "gradients (also the gradients), parameters (also the weights)")
          .choices(kShardModeNames),
  });
  return s;
}

const core::Schema<DistillHidden>& distill_hidden_schema() {
  using C = DistillHidden;
  static const core::Schema<DistillHidden> s({
      core::key("layers", &C::layers, "blocks whose residual streams are matched to the teacher's")
          .check(
              [](const std::vector<int64_t>& v) {
                return std::all_of(v.begin(), v.end(), [](int64_t l) { return l >= 0; });
              },
              "a list of block indices (integers >= 0)"),
      core::key("weight", &C::weight, "weight of the hidden-state loss").range(0.0, 1e6),
  });
  return s;
}

const core::Schema<DistillAttention>& distill_attention_schema() {
  using C = DistillAttention;
  static const core::Schema<DistillAttention> s({
      core::key("layer", &C::layer, "the block whose q, k, v self-attention relations are matched to the teacher's")
          .range(int64_t{0}, int64_t{1} << 30),
      core::key("weight", &C::weight, "weight of the attention-relation loss").range(0.0, 1e6),
      core::key("relations", &C::relations, "which relations: softmax(X X^T / sqrt(d_r)) of X = q, k and/or v")
          .check(
              [](const std::vector<std::string>& v) {
                std::set<std::string> seen;
                for (const auto& r : v) {
                  if ((r != "q" && r != "k" && r != "v") || !seen.insert(r).second) return false;
                }
                return !v.empty();
              },
              "a non-empty list of q, k, v, each at most once"),
      core::key("heads", &C::heads,
                "relation heads each projection is split into (its concatenated heads, in order); 0: the model's "
                "n_kv_heads, which divides the widths of q and of k and v")
          .range(int64_t{0}, int64_t{1} << 20),
  });
  return s;
}

}  // namespace

int64_t relation_heads(const DistillAttention& a, const models::LMConfig& m) {
  return a.heads > 0 ? a.heads : m.n_kv_heads;
}

std::string attention_heads_problem(const DistillAttention& a, const models::LMConfig& m) {
  const int64_t h = relation_heads(a, m);
  for (const auto& r : a.relations) {
    const int64_t width = (r == "q" ? m.n_heads : m.n_kv_heads) * m.head_dim();
    if (h < 1 || width % h != 0) {
      return fmt::format(
          "{} relation heads do not split {} (its {} heads x {} = {} features) into equal parts: heads must divide "
          "{} (a model of {} heads, {} key/value heads, head_dim {})",
          h, r, r == "q" ? m.n_heads : m.n_kv_heads, m.head_dim(), width, width, m.n_heads, m.n_kv_heads,
          m.head_dim());
    }
  }
  return {};
}

namespace {

const core::Schema<DistillConfig>& distill_schema() {
  using C = DistillConfig;
  static const core::Schema<DistillConfig> s({
      core::key("enabled", &C::enabled, "distil (true when the section is given)").fallback("true"),
      core::key("teacher", &C::teacher,
                "the full-precision teacher: a GGUF, a Hugging Face directory, a bitqat run or checkpoint; "
                "empty: init_from")
          .fallback("init_from"),
      core::key("alpha", &C::alpha, "weight of the cross-entropy on the data (1 - alpha: the teacher's)")
          .range(0.0, 1.0),
      core::key("temperature", &C::temperature, "softmax temperature of the distillation loss").range(1e-3, 1e3),
  });
  return s;
}

// The root's own keys.
struct RootKeys {
  std::string init_from;
};
const core::Schema<RootKeys>& root_schema() {
  static const core::Schema<RootKeys> s({
      core::key("init_from", &RootKeys::init_from,
                "weights a fresh run starts from: a Hugging Face Llama directory, a llama GGUF, a bitqat run, "
                "checkpoint or safetensors file; empty: a random initialisation"),
  });
  return s;
}
const std::set<std::string> kSections = {"run",        "model", "quant",  "data", "optim",     "train",
                                         "checkpoint", "log",   "device", "dist", "init_from", "distill"};

void parse_distill(const core::Node& n, bool check_files, DistillConfig* c) {
  c->node = n;
  if (!n.defined()) return;
  c->enabled = true;
  distill_schema().parse_into(n, c, {"hidden", "attention"});
  if (check_files && c->enabled && !c->teacher.empty() && !std::filesystem::exists(c->teacher)) {
    n.fail("teacher", "an existing model path (a GGUF, a Hugging Face directory or a bitqat run or checkpoint)");
  }
  const auto h = n.child("hidden");
  if (h.defined()) distill_hidden_schema().parse_into(h, &c->hidden);
  const auto a = n.child("attention");
  c->attention.node = a;
  if (a.defined()) {
    if (!a.child("layer").defined()) a.fail("layer", "the block whose relations are matched (an integer >= 0)");
    distill_attention_schema().parse_into(a, &c->attention);
  }
}

// Schedules are built once here only to validate them (with train.steps known); the trainer builds
// its own copies.
void validate_schedule(const core::Node& n, schedules::ScheduleRole role, int64_t steps) {
  if (n.defined()) schedules::make_schedule(n, role, steps);
}

// A diffusion transformer generates the data's images: the same shape and classes.
void check_dit_data(const models::ModelConfig& model, const data::DataConfig& data) {
  if (data.data_kind() != data::DataKind::kImages) {
    throw core::ConfigError(fmt::format("{} = dit: a diffusion transformer needs image data, got data.kind {}",
                                        model.where("kind"), data::to_string(data.kind)));
  }
  const auto& dit = model.dit;
  const auto shape = data.image_shape();
  const std::vector<std::pair<const char*, int64_t>> have = {
      {"channels", dit.channels}, {"height", dit.height}, {"width", dit.width}};
  for (size_t i = 0; i < have.size(); ++i) {
    if (have[i].second != shape[i]) {
      throw core::ConfigError(fmt::format(
          "{} = {}: data.kind {} has images of {} x {} x {} (channels x height x width)", model.where(have[i].first),
          have[i].second, data::to_string(data.kind), shape[0], shape[1], shape[2]));
    }
  }
  if (dit.num_classes != data.vocab()) {
    throw core::ConfigError(fmt::format("{} = {}: expected the data's {} classes", model.where("num_classes"),
                                        dit.num_classes, data.vocab()));
  }
}

// Conditions between sections, checked once every section is parsed.
void check_across(const Config& c) {
  const bool lm = c.model.kind == models::ModelKind::kLM;
  if (lm && c.data.data_kind() == data::DataKind::kTokens && c.data.seq_len > c.model.lm.max_seq_len) {
    throw core::ConfigError(fmt::format(
        "{} exceeds {} = {}: training windows longer than the model's context would train positions the model "
        "(and its exports) do not have; lower data.seq_len or raise model.max_seq_len",
        c.data.node.describe("seq_len"), c.model.where("max_seq_len"), c.model.lm.max_seq_len));
  }
  if (c.model.kind == models::ModelKind::kDiT) check_dit_data(c.model, c.data);
  if (c.model.kind == models::ModelKind::kCNN && !c.train.activation_checkpointing.none()) {
    throw core::ConfigError(
        fmt::format("{}: activation checkpointing recomputes transformer blocks, and model.kind cnn has none; use none "
                    "(or an lm or dit model)",
                    c.root.child("train").describe("activation_checkpointing")));
  }
  if (c.distill.enabled) {
    const auto& d = c.distill.node;
    if (!lm || c.data.data_kind() != data::DataKind::kTokens) {
      throw core::ConfigError(
          fmt::format("{}: distillation is for language models (model.kind lm on token data)", d.where()));
    }
    if (c.distill.teacher.empty() && c.init_from.empty()) {
      throw core::ConfigError(fmt::format(
          "{}: no teacher: set distill.teacher to a model path, or init_from (the default teacher)", d.where()));
    }
    for (auto l : c.distill.hidden.layers) {
      if (l >= c.model.lm.n_layers) {
        throw core::ConfigError(fmt::format("{} holds block {}, but the model has {} blocks (0 to {})",
                                            d.child("hidden").where("layers"), l, c.model.lm.n_layers,
                                            c.model.lm.n_layers - 1));
      }
    }
    const auto& at = c.distill.attention;
    if (at.layer >= 0) {
      if (at.layer >= c.model.lm.n_layers) {
        throw core::ConfigError(fmt::format("{} = {}, but the model has {} blocks (0 to {})", at.node.where("layer"),
                                            at.layer, c.model.lm.n_layers, c.model.lm.n_layers - 1));
      }
      if (const auto why = attention_heads_problem(at, c.model.lm); !why.empty()) {
        throw core::ConfigError(fmt::format("{}: {}", at.node.where(at.node.child("heads").defined() ? "heads" : ""),
                                            why));
      }
      if (!c.train.activation_checkpointing.none() || c.dist.shard == ShardMode::kParameters) {
        throw core::ConfigError(fmt::format(
            "{} with {}: the block's q, k, v are read outside the block, which a recomputed block does not keep "
            "with their graph; use train.activation_checkpointing: none and a dist.shard other than parameters",
            at.node.where(), c.dist.shard == ShardMode::kParameters
                                 ? "dist.shard = parameters (every block recomputed)"
                                 : "train.activation_checkpointing = " + c.train.activation_checkpointing.to_string()));
      }
    }
  }
  if (c.train.ema.enabled && c.train.ema.start_step > c.train.steps) {
    throw core::ConfigError(fmt::format("{} is beyond train.steps = {}: the average would never start",
                                        c.train.ema.node.describe("start_step"), c.train.steps));
  }
  if (c.distill.enabled && !c.distill.hidden.layers.empty() && c.dist.shard == ShardMode::kParameters) {
    throw core::ConfigError(fmt::format(
        "{} = parameters with distill.hidden: a matched block's output is read outside the block, so its graph "
        "would keep the weights that sharded parameters release after each block; use dist.shard: gradients, or "
        "logit distillation alone",
        c.root.child("dist").where("shard")));
  }
  if (c.train.ema.enabled && c.dist.shard == ShardMode::kParameters) {
    throw core::ConfigError(fmt::format(
        "{} = parameters with train.ema: the average is kept of whole weights on every rank, which sharded "
        "parameters do not hold; use dist.shard: gradients (or optimizer), or drop train.ema",
        c.root.child("dist").where("shard")));
  }
  if (c.quant.spec.weight.scale == bitlinear::ScaleSource::kLearned) {
    const auto where = c.root.child("quant").child("weight").where("scale");
    if (c.model.kind == models::ModelKind::kCNN) {
      throw core::ConfigError(fmt::format(
          "{} = learned with model.kind cnn: learned scales are for BitLinear layers (lm, dit); a cnn's convolutions "
          "take absmean",
          where));
    }
    if (c.dist.shard == ShardMode::kParameters) {
      throw core::ConfigError(fmt::format(
          "{} = learned with dist.shard = parameters: sharded parameters gather the weights as 2-bit codes with "
          "absmean scales; use dist.shard: gradients (or optimizer), or quant.weight.scale: absmean",
          where));
    }
  }
  validate_schedule(c.optim.lr, schedules::ScheduleRole::kLearningRate, c.train.steps);
  validate_schedule(c.optim.weight_decay, schedules::ScheduleRole::kWeightDecay, c.train.steps);
  validate_schedule(c.quant.lambda_w, schedules::ScheduleRole::kLambda, c.train.steps);
  validate_schedule(c.quant.lambda_a, schedules::ScheduleRole::kLambda, c.train.steps);
}

std::string absolute(const std::string& path) { return std::filesystem::absolute(path).lexically_normal().string(); }

}  // namespace

core::Node constant_schedule(double value) {
  return core::Node::load_string(fmt::format("{{kind: constant, value: {}}}", value), "(default)");
}

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
  root.allow_only(kSections);
  run_schema().parse_into(root.child("run"), &c.run);
  train_schema().parse_into(root.child("train"), &c.train, {"ema"});
  c.train.ema.node = root.child("train").child("ema");
  if (c.train.ema.node.defined()) {
    c.train.ema.enabled = true;
    ema_schema().parse_into(c.train.ema.node, &c.train.ema);
  }
  optim_schema().parse_into(root.child("optim"), &c.optim);
  const auto quant = root.child("quant");
  quant_schema().parse_into(quant, &c.quant, kQuantSpecKeys);
  c.quant.spec = bitlinear::quant_spec_from_yaml(quant);
  checkpoint_schema().parse_into(root.child("checkpoint"), &c.checkpoint);
  log_schema().parse_into(root.child("log"), &c.log);
  device_schema().parse_into(root.child("device"), &c.device);
  dist_schema().parse_into(root.child("dist"), &c.dist);
  RootKeys keys;
  for (const auto& f : root_schema().fields()) {
    if (root.has(f.key)) f.read(root, &keys);
  }
  c.init_from = keys.init_from;
  parse_distill(root.child("distill"), check_files, &c.distill);
  if (!root.child("model").defined()) {
    throw core::ConfigError(fmt::format("{}: the config needs a model: section", root.where()));
  }
  if (!root.child("data").defined()) {
    throw core::ConfigError(fmt::format("{}: the config needs a data: section", root.where()));
  }
  c.model = models::ModelConfig::from_yaml(root.child("model"));
  c.data = data::DataConfig::from_yaml(root.child("data"), check_files);
  check_across(c);
  return c;
}

YAML::Node Config::resolved() const {
  YAML::Node out(YAML::NodeType::Map);
  run_schema().write(run, out["run"]);
  model.write(out["model"]);
  if (model.kind == models::ModelKind::kLM && model.lm.vocab_size == 0) out["model"]["vocab_size"] = data.vocab();
  auto q = out["quant"];
  YAML::Node spec;
  bitlinear::quant_spec_to_yaml(quant.spec, &spec);
  q["weight"] = spec["weight"];
  q["activation"] = spec["activation"];
  quant_schema().write(quant, q);
  data.write(out["data"]);
  data.write_absolute_paths(out["data"]);
  optim_schema().write(optim, out["optim"]);
  train_schema().write(train, out["train"]);
  if (train.ema.node.defined()) ema_schema().write(train.ema, out["train"]["ema"]);
  checkpoint_schema().write(checkpoint, out["checkpoint"]);
  log_schema().write(log, out["log"]);
  device_schema().write(device, out["device"]);
  dist_schema().write(dist, out["dist"]);
  if (!init_from.empty()) out["init_from"] = absolute(init_from);
  if (distill.node.defined()) {
    auto d = out["distill"];
    distill_schema().write(distill, d);
    if (!distill.teacher.empty()) d["teacher"] = absolute(distill.teacher);
    distill_hidden_schema().write(distill.hidden, d["hidden"]);
    if (distill.attention.layer >= 0) distill_attention_schema().write(distill.attention, d["attention"]);
  }
  return out;
}

std::vector<core::KeyReference> Config::reference() {
  std::vector<core::KeyReference> rows;
  auto add = [&](std::vector<core::KeyReference> more) {
    for (auto& r : more) rows.push_back(std::move(r));
  };
  add(run_schema().reference("run."));
  add(models::ModelConfig::reference());
  add(quant_schema().reference("quant."));
  add(schedules::schedule_reference(schedules::ScheduleRole::kLambda, "quant.lambda_w"));
  add(schedules::schedule_reference(schedules::ScheduleRole::kLambda, "quant.lambda_a"));
  add(bitlinear::quant_spec_reference("quant."));
  add(data::DataConfig::reference());
  add(optim_schema().reference("optim."));
  add(schedules::schedule_reference(schedules::ScheduleRole::kLearningRate, "optim.lr"));
  add(schedules::schedule_reference(schedules::ScheduleRole::kWeightDecay, "optim.weight_decay"));
  add(train_schema().reference("train."));
  add(ema_schema().reference("train.ema."));
  add(checkpoint_schema().reference("checkpoint."));
  add(log_schema().reference("log."));
  add(device_schema().reference("device."));
  add(dist_schema().reference("dist."));
  add(root_schema().reference(""));
  add(distill_schema().reference("distill."));
  add(distill_hidden_schema().reference("distill.hidden."));
  add(distill_attention_schema().reference("distill.attention."));
  return rows;
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
  return fnv1a("bitqat-compat-v2\n" + models::model_identity(model, data.vocab()) + "\n" + core::to_yaml_string(q));
}

std::string Config::legacy_compat_hash() const {
  YAML::Node key;
  key["model"] = YAML::Clone(model.node.yaml());
  YAML::Node qs;
  bitlinear::quant_spec_to_yaml(quant.spec, &qs);
  key["quant"] = qs;
  key["include"] = quant.include;
  key["exclude"] = quant.exclude;
  return fnv1a(core::to_yaml_string(key));
}

}  // namespace bitqat::training
