// The bitqat command line, parsed by CLI11: one subcommand per job, each filling its options struct.
// Unknown options, missing values and values of the wrong type or range are refused by the parser,
// naming the option; the commands (apps/commands.hpp) receive typed, checked values.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bitqat::apps {

struct TrainArgs {
  std::string config;  // empty: the built-in quickstart
  std::vector<std::string> sets;
  bool resume = false;
};

struct ConfigArgs {
  std::string config;  // empty: the built-in quickstart
  std::vector<std::string> sets;
  bool reference = false;  // print the reference of every key instead
};

struct PlanArgs {
  std::string config;
  std::vector<std::string> sets;
  int world_size = 1;
};

struct EvalArgs {
  std::string run_dir;
  bool json = false;
  std::optional<int64_t> batches;
  bool fully_quantized = false;   // lambda 1 instead of the checkpoint's lambdas
  bool no_ema = false;            // the raw weights instead of the checkpoint's average (train.ema)
  std::vector<std::string> sets;  // data.* overrides (where the validation data is)
  // DiT runs only: the image-quality metric (training/image_quality.hpp). Unset: the defaults below.
  std::optional<std::string> classifier;  // default runs/fashion_mnist_fp
  std::optional<int64_t> samples;         // default 1000; 0: held-out loss only
  std::optional<int64_t> steps;           // default 10
  std::optional<double> cfg;              // default 2
  std::optional<std::string> solver;      // default heun
  std::optional<uint64_t> seed;           // default 1
};

struct SampleArgs {
  std::string run_dir;
  int64_t n = 8;
  std::string cls = "all";  // a class index or "all"
  int64_t steps = 10;
  double cfg = 2.0;
  std::string solver = "heun";
  uint64_t seed = 1;
  std::string out;
  bool fully_quantized = false;
  bool no_ema = false;
};

struct GenerateArgs {
  std::string run_dir;
  std::string prompt;
  int64_t tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 40;
  uint64_t seed = 1;
  bool fully_quantized = false;
  bool no_ema = false;
};

struct QuantizeArgs {
  std::string src_run_dir;
  std::string out;
  std::vector<std::string> sets;
  bool json = false;
  bool no_ema = false;
};

struct ExportArgs {
  std::string run_dir;
  std::string format;
  std::string out;
  std::string gguf_type;   // empty: tq2_0
  std::string gguf_float;  // empty: f32
  bool gguf_force_relu2 = false;
  std::string name;
  bool no_ema = false;
};

// `bitqat version`: at most one of the flags (CLI11 refuses both).
struct VersionArgs {
  bool cpu_capability = false;  // --cpu-capability: only LibTorch's CPU capability
  bool cpu_isas = false;        // --cpu-isas: only the kernel sets this CPU can run
};

struct Command {
  std::string name;  // train | eval | generate | sample | quantize | export | config | plan | version; empty: help was printed
  TrainArgs train;
  EvalArgs eval;
  GenerateArgs generate;
  SampleArgs sample;
  QuantizeArgs quantize;
  ExportArgs export_;
  ConfigArgs config;
  PlanArgs plan;
  VersionArgs version;
};

// The top-level usage text (printed for `bitqat`, `bitqat --help` and unknown commands).
const char* usage();

// Parses argv. Help requests print the help on stdout and return a Command with an empty name.
// Throws core::UserError (exit code 2) for anything the parser refuses, with "bitqat CMD: " context.
Command parse_command_line(int argc, char** argv);

}  // namespace bitqat::apps
