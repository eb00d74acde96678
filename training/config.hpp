// The root training config: every section parsed and validated from YAML (with --set overrides)
// before any model, data or device work starts. Unknown keys and bad values name file:line and key.
// Each section is declared once, as a core::Schema in config.cpp (its keys, defaults below, ranges,
// meanings); the parse, config.resolved.yaml and the config reference come from it.
#pragma once
#include <yaml-cpp/yaml.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "bitlinear/quant_spec.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"
#include "data/source.hpp"
#include "models/factory.hpp"
#include "models/recompute.hpp"

namespace bitqat::training {

struct RunConfig {
  std::string name = "quickstart";
  std::string dir = "runs";
  uint64_t seed = 1234;
  std::string run_dir() const { return dir + "/" + name; }
};

// train.ema: an exponential moving average of the parameters (training/ema.hpp); eval, generate,
// sample, quantize and export use it when the checkpoint holds it.
struct EmaConfig {
  bool enabled = false;  // true when the section is given
  double decay = 0.9999;
  int64_t start_step = 0;  // until this step the average is the parameters themselves
  core::Node node;         // the section, for error locations
};

struct TrainLoopConfig {
  int64_t steps = 1000;
  int64_t batch_size = 16;  // per process
  int grad_accum = 1;
  int log_every = 10;
  int eval_every = 100;        // 0: only at the end
  bool eval_at_start = false;  // also evaluate a fresh run before its first step (the starting point)
  int eval_batches = 8;
  int max_bad_steps = 5;  // consecutive non-finite steps before the run stops
  // Transformer blocks recomputed in the backward pass instead of keeping their activations (lm and
  // dit models); the same losses and gradients, bit for bit.
  models::Checkpointing activation_checkpointing;
  EmaConfig ema;
};

// The schedule {kind: constant, value: v}: the default of a schedule key.
core::Node constant_schedule(double value);

struct OptimConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;                            // 0: off
  core::Node lr = constant_schedule(1e-3);           // a schedules:: node (role kLearningRate)
  core::Node weight_decay = constant_schedule(0.0);  // a schedules:: node (role kWeightDecay)
};

struct QuantConfig {
  bitlinear::QuantSpec spec;
  std::vector<std::string> include = {"*"};
  std::vector<std::string> exclude;
  core::Node lambda_w = constant_schedule(1.0);  // schedules:: node (role kLambda)
  core::Node lambda_a = constant_schedule(1.0);
};

struct CheckpointConfig {
  int64_t every = 0;  // 0: only the final checkpoint
  int keep_last = 3;
};

// Where a run's metrics go besides RUN_DIR/metrics.jsonl and the log.
struct LogConfig {
  bool tensorboard = false;  // TensorBoard event files in the run directory
};

enum class DeviceType { kAuto, kCpu, kCuda };
inline constexpr std::array<core::EnumName<DeviceType>, 3> kDeviceTypeNames = {
    {{DeviceType::kAuto, "auto"}, {DeviceType::kCpu, "cpu"}, {DeviceType::kCuda, "cuda"}}};
// auto: bf16 autocast on a GPU, fp32 on the CPU.
enum class Precision { kAuto, kFp32, kBf16 };
inline constexpr std::array<core::EnumName<Precision>, 3> kPrecisionNames = {
    {{Precision::kAuto, "auto"}, {Precision::kFp32, "fp32"}, {Precision::kBf16, "bf16"}}};
// auto: NCCL on CUDA devices, Gloo on the CPU.
enum class Backend { kAuto, kNccl, kGloo };
inline constexpr std::array<core::EnumName<Backend>, 3> kBackendNames = {
    {{Backend::kAuto, "auto"}, {Backend::kNccl, "nccl"}, {Backend::kGloo, "gloo"}}};

struct DeviceConfig {
  DeviceType type = DeviceType::kAuto;
  Precision precision = Precision::kAuto;
  int threads = 0;  // CPU intra-op threads; 0: LibTorch's default
  double memory_gb = 0.0;  // memory of one device in GiB (bitqat plan, the trainer's check); 0: unset
};

// dist.shard: what data parallelism splits across ranks (ZeRO stages 1, 2, 3; docs/distributed.md).
enum class ShardMode { kNone, kOptimizer, kGradients, kParameters };
inline constexpr std::array<core::EnumName<ShardMode>, 4> kShardModeNames = {{{ShardMode::kNone, "none"},
                                                                             {ShardMode::kOptimizer, "optimizer"},
                                                                             {ShardMode::kGradients, "gradients"},
                                                                             {ShardMode::kParameters, "parameters"}}};

struct DistConfig {
  Backend backend = Backend::kAuto;
  int timeout_s = 300;
  double bucket_mb = 25.0;
  bool overlap = true;
  ShardMode shard = ShardMode::kNone;
};

// distill.hidden: matching the student's residual streams to the teacher's.
struct DistillHidden {
  std::vector<int64_t> layers;  // blocks whose residual streams are matched (none: off)
  double weight = 1.0;
};

// distill.attention: self-attention relation distillation on one block (MiniLM-v2; training/distill.hpp).
struct DistillAttention {
  int64_t layer = -1;  // the block whose q, k, v relations are matched (-1: off)
  double weight = 1.0;
  std::vector<std::string> relations{"q", "k", "v"};  // each of q, k, v at most once
  int64_t heads = 0;                                  // relation heads; 0: the model's n_kv_heads
  core::Node node;                                    // the section, for error locations
};

// The relation heads of `a` for model `m` (a.heads, or m.n_kv_heads when 0), and why they do not fit
// it (empty: they do): the width of each listed projection (q: n_heads * head_dim; k and v:
// n_kv_heads * head_dim) must be a multiple of the heads.
int64_t relation_heads(const DistillAttention& a, const models::LMConfig& m);
std::string attention_heads_problem(const DistillAttention& a, const models::LMConfig& m);

// distill: knowledge distillation from a full-precision teacher (training/distill.hpp).
struct DistillConfig {
  bool enabled = false;  // true when the section is present (enabled: false turns it off)
  std::string teacher;   // an init_from-style path; "" = the init_from source
  double alpha = 0.5;    // weight of the cross-entropy on the data, in [0, 1]
  double temperature = 1.0;
  DistillHidden hidden;
  DistillAttention attention;
  core::Node node;  // the section, for error locations
};

struct Config {
  core::Node root;  // the document after --set overrides, for locations in later errors
  std::string file;
  RunConfig run;
  TrainLoopConfig train;
  OptimConfig optim;
  QuantConfig quant;
  CheckpointConfig checkpoint;
  LogConfig log;
  DeviceConfig device;
  DistConfig dist;
  models::ModelConfig model;  // the model: section, parsed (vocab_size resolved from the data)
  data::DataConfig data;      // the data: section, parsed
  std::string init_from;      // weights a fresh run starts from (interop/init_source.hpp); "" = random
  DistillConfig distill;

  // check_files = false validates everything but the existence of the data files (a run directory
  // opened by eval, generate or export, whose data may have moved or be absent).
  static Config load_file(const std::string& file, const std::vector<std::string>& overrides = {},
                          bool check_files = true);
  static Config load_string(const std::string& text, const std::string& name,
                            const std::vector<std::string>& overrides = {}, bool check_files = true);
  static Config from_node(const core::Node& root, bool check_files = true);

  // Everything, defaults filled in, as written to RUN_DIR/config.resolved.yaml: every key of every
  // section, the vocabulary resolved from the data, data paths and init_from absolute (the run
  // directory can be used from any working directory). Loading it gives the same Config.
  YAML::Node resolved() const;
  // Every key of every section: path, type, default, range or choices, meaning (the config
  // reference; model and data keys name the kind they belong to).
  static std::vector<core::KeyReference> reference();
  // Hash of what makes a checkpoint's tensors meaningful: the parsed model settings that change
  // tensors or the function (models::model_identity), the quantization spec and the include /
  // exclude lists. Key order, comments and defaults spelled out or not do not change it. A resume
  // with a different hash is refused.
  std::string compat_hash() const;
  // The hash of bitqat 0.1 checkpoints (of the YAML text), still accepted on resume.
  std::string legacy_compat_hash() const;
};

}  // namespace bitqat::training
