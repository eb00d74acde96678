#include "apps/cli.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "apps/exports.hpp"
#include "core/error.hpp"
#include "interop/export_gguf.hpp"

namespace bitqat::apps {
namespace {

const char* kUsageHead =
    "bitqat: ternary / binary quantization-aware training\n"
    "\n"
    "usage: bitqat <command> [options]\n"
    "\n"
    "commands:\n"
    "  train [CONFIG.yaml] [--set key.path=value ...] [--resume]\n"
    "                       train a model (no CONFIG: the built-in quickstart)\n"
    "  eval RUN_DIR [--json] [--batches N] [--fully-quantized] [--set data.key=value ...]\n"
    "       [--classifier DIR] [--samples N] [--steps S] [--cfg W] [--solver euler|heun] [--sample-seed X]\n"
    "                       validation loss (and bits per byte or accuracy) of a run's newest checkpoint;\n"
    "                       for a DiT run also the Frechet distance and accuracy of its samples\n"
    "  generate RUN_DIR --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "                       sample text from a language model run (or a packed export)\n"
    "  sample RUN_DIR --out grid.png [--n N] [--class K|all] [--steps S] [--cfg W] [--solver euler|heun]\n"
    "         [--seed X]    class-conditional images from a DiT run (or a packed export) as a PNG grid\n"
    "  quantize SRC_RUN_DIR|CONFIG --out OUT_RUN_DIR [--set key.path=value ...] [--json]\n"
    "                       data-free ternarization of a full-precision run, with its validation loss\n"
    "  export RUN_DIR --format {formats} --out PATH [--gguf-type {gguf_types}]\n"
    "                       {summaries}\n"
    "  config [CONFIG.yaml] [--set key.path=value ...] | --reference\n"
    "                       the config as training would run it, every default filled in; or every key\n"
    "  plan CONFIG.yaml [--world-size N] [--set key.path=value ...]\n"
    "                       memory per rank, term by term, for dist.shard and the world size; exits 2\n"
    "                       when it exceeds the device (device.memory_gb, else the GPU's or the RAM)\n"
    "  version              print the version\n"
    "\n"
    "eval, generate, sample, quantize and export use a run's average of its weights (train.ema) when its\n"
    "checkpoint holds one; --no-ema takes the raw weights.\n"
    "`bitqat <command> --help` describes a command.\n";

const char* kTrainHelp =
    "Trains the model a YAML config describes (configs/ has examples; without CONFIG the built-in\n"
    "quickstart runs: a ternary byte-level LM on the KJV Bible, prepared by data/prepare_kjv.sh).\n"
    "Results: run.dir/run.name/{config.resolved.yaml, metrics.jsonl, checkpoints/}.\n"
    "A config's `init_from: PATH` starts a fresh run from existing weights: a bitqat run, checkpoint or\n"
    "safetensors file, or a Hugging Face Llama directory (configs/finetune_*.yaml fine-tune a\n"
    "full-precision run into a ternary one).\n"
    "Launch several processes (launch/local.sh, torchrun --no-python, SLURM) for data parallelism.\n";

const char* kEvalHelp =
    "Validation loss of the run's newest checkpoint (plus val_bpb for byte-level text, val_acc for\n"
    "images), with the lambdas the trainer used at that checkpoint, so the loss equals the val_loss the\n"
    "trainer logged for it. RUN_DIR may be a packed export (bitqat export). Only the validation data is\n"
    "read; when it has moved, point at it with --set data.path=... (or data.val / data.dir).\n"
    "For a diffusion transformer (model.kind dit) the loss is the held-out flow-matching loss, and eval\n"
    "also generates --samples images (class i mod 10 for sample i, with --steps, --cfg, --solver and\n"
    "--sample-seed as in `bitqat sample`) and reports the Frechet distance between their features and\n"
    "the test set's, and the accuracy of their labels, under a full-precision Fashion-MNIST classifier run\n"
    "(--classifier, default runs/fashion_mnist_fp: bitqat train configs/fashion_mnist_fp.yaml). A relative\n"
    "metric for comparing runs, not FID. --samples 0 reports the loss only.\n";

const char* kGenerateHelp =
    "Samples a continuation from a language model run or a packed export (temperature 0: greedy), with\n"
    "the lambdas of the run's newest checkpoint. Reads no training data. A byte-level run (data.kind\n"
    "text) takes the prompt's bytes; a run trained on token shards encodes it with the tokenizer of its\n"
    "init_from model (a GGUF, a Hugging Face directory with tokenizer.json, or a bitqat run started from\n"
    "one; byte-level BPE), stops at that tokenizer's end-of-sequence token and prints the text decoded.\n";

const char* kSampleHelp =
    "Class-conditional images from a diffusion transformer run (model.kind dit) or its packed export:\n"
    "noise integrated from t = 0 to 1 along the learned velocity (flow matching) with S Euler or Heun\n"
    "steps (Heun: two model evaluations per step) and classifier-free guidance weight W (0: unconditional,\n"
    "1: conditional, above 1: stronger conditioning; each evaluation runs the model on 2N images).\n"
    "--class all draws N images of every class, one grid row per class; --class K draws N images of\n"
    "class K, 10 per row. Sample i starts from the noise of (seed, i). Writes one PNG (libpng).\n";

const char* kQuantizeHelp =
    "Data-free ternarization: the newest checkpoint of a (full-precision) run becomes a ternary model\n"
    "without training (absmean ternary weights per tensor, 8-bit per-token activations, lambda 1, on\n"
    "the layers quant.include / quant.exclude select), and its validation loss is reported. This is\n"
    "the baseline a progressive fine-tune (configs/finetune_*.yaml) must beat. SRC may also be a training\n"
    "config whose init_from names the full-precision model (a GGUF, a Hugging Face directory): the\n"
    "model is the config's, read from init_from.\n"
    "OUT_RUN_DIR receives config.resolved.yaml, metrics.jsonl with the validation loss and\n"
    "checkpoints/step_00000000; `bitqat eval`, `bitqat train --resume` and init_from accept it.\n";

// `text` broken at spaces into lines of at most `width` characters, every line after the first
// starting with `indent` spaces (the first is assumed to start at that column too).
std::string wrap(const std::string& text, size_t indent, size_t width = 100) {
  std::string out, line;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    const std::string word = text.substr(pos, end - pos);
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      out += line + "\n" + std::string(indent, ' ');
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
    pos = end + 1;
  }
  return out + line;
}

// `bitqat export --help`: each format's paragraph from its registration (apps/exports.hpp).
std::string export_help() {
  std::string text = "Exports the fully quantized model (lambda = 1) of a run's newest checkpoint:\n";
  for (const auto& f : export_formats()) text += fmt::format("  {:<11}{}\n", f.name, wrap(f.help(), 13));
  return text + "PATH must not exist. The export runs on the CPU and reads no training data.\n";
}

std::vector<std::string> export_format_names() {
  std::vector<std::string> names;
  for (const auto& f : export_formats()) names.emplace_back(f.name);
  return names;
}

// Strict integer and number checks: the whole text must be one value inside [lo, hi].
CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(s.c_str(), &end, 10);
        const bool ok = !s.empty() && end && *end == '\0' && errno == 0;
        if (!ok || v < lo || v > hi) {
          return hi == std::numeric_limits<int64_t>::max()
                     ? fmt::format("'{}': expected an integer >= {}", s, lo)
                     : fmt::format("'{}': expected an integer in [{}, {}]", s, lo, hi);
        }
        return "";
      },
      "");
}

CLI::Validator number_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        const bool ok = !s.empty() && end && *end == '\0' && errno != ERANGE && std::isfinite(v);
        if (!ok || v < lo || v > hi) return fmt::format("'{}': expected a finite number in [{}, {}]", s, lo, hi);
        return "";
      },
      "");
}

void add_sets(CLI::App* c, std::vector<std::string>* sets, const char* what) {
  c->add_option("--set", *sets, what)
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->type_name("key.path=value");
}

// Usage lines name the program: "Usage: bitqat train [OPTIONS] [CONFIG]".
class Formatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App* app, std::string name) const override {
    return CLI::Formatter::make_usage(app, app->get_parent() ? "bitqat " + name : name);
  }
};

// The first token of a CLI11 message names what it refused; say which command was being parsed.
[[noreturn]] void refuse(const std::string& command, const CLI::ParseError& e) {
  std::string msg = e.what();
  if (msg.rfind("The following argument", 0) == 0 || msg.rfind("The following arguments", 0) == 0) {
    const auto colon = msg.find(':');
    msg = "unknown option or extra argument '" + msg.substr(colon + 2) + "'";
  }
  throw core::UserError(fmt::format("{} (see bitqat {} --help)", msg, command));
}

}  // namespace

const char* usage() {
  static const std::string text = [] {
    std::string summaries;
    const auto& formats = export_formats();
    for (size_t i = 0; i < formats.size(); ++i) {
      summaries += (i == 0 ? "" : i + 1 == formats.size() ? ", or " : ", ") + std::string(formats[i].summary);
    }
    return fmt::format(fmt::runtime(kUsageHead), fmt::arg("formats", fmt::join(export_format_names(), "|")),
                       fmt::arg("gguf_types", fmt::join(interop::gguf_type_choices(/*codes=*/true), "|")),
                       fmt::arg("summaries", wrap("export the ternary model: " + summaries, 23)));
  }();
  return text.c_str();
}

Command parse_command_line(int argc, char** argv) {
  Command cmd;
  CLI::App app{"bitqat: ternary / binary quantization-aware training", "bitqat"};
  app.require_subcommand(1);
  app.fallthrough(false);
  app.formatter(std::make_shared<Formatter>());

  auto* train = app.add_subcommand("train", "train a model (no CONFIG: the built-in quickstart)");
  train->footer(kTrainHelp);
  train->add_option("CONFIG", cmd.train.config, "a YAML config (configs/ has examples)");
  add_sets(train, &cmd.train.sets, "override one config value (same checks as the file; repeatable)");
  train->add_flag("--resume", cmd.train.resume, "continue from the newest complete checkpoint in run.dir/run.name");

  auto* eval = app.add_subcommand("eval", "validation loss of a run's newest checkpoint");
  eval->footer(kEvalHelp);
  eval->add_option("RUN_DIR", cmd.eval.run_dir, "a run directory or a packed export")->required();
  eval->add_flag("--json", cmd.eval.json, "print one JSON object");
  eval->add_option("--batches", cmd.eval.batches, "validation batches (default: the run's train.eval_batches)")
      ->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  eval->add_flag("--fully-quantized", cmd.eval.fully_quantized,
                 "evaluate at lambda_w = lambda_a = 1 instead of the checkpoint's lambdas");
  eval->add_flag("--no-ema", cmd.eval.no_ema, "the raw weights, not the checkpoint's average of them (train.ema)");
  add_sets(eval, &cmd.eval.sets, "override a data.* key of the run's config, e.g. data.path=/new/place/kjv.txt");

  eval->add_option("--classifier", cmd.eval.classifier, "DiT runs: the Fashion-MNIST classifier run of the metric");
  eval->add_option("--samples", cmd.eval.samples, "DiT runs: images generated for the metric (0: none)")
      ->check(integer_in(0, int64_t{1} << 24));
  eval->add_option("--steps", cmd.eval.steps, "DiT runs: integration steps per image")
      ->check(integer_in(1, int64_t{1} << 20));
  eval->add_option("--cfg", cmd.eval.cfg, "DiT runs: classifier-free guidance weight")->check(number_in(0.0, 1e3));
  eval->add_option("--solver", cmd.eval.solver, "DiT runs: euler | heun")->check(CLI::IsMember({"euler", "heun"}));
  eval->add_option("--sample-seed", cmd.eval.seed, "DiT runs: noise seed of the generated images")
      ->check(integer_in(0, std::numeric_limits<int64_t>::max()));

  auto* gen = app.add_subcommand("generate", "sample text from a language model run");
  gen->footer(kGenerateHelp);
  gen->add_option("RUN_DIR", cmd.generate.run_dir, "a run directory or a packed export")->required();
  gen->add_option("--prompt", cmd.generate.prompt, "the text to continue (at least one byte)")->required();
  gen->add_option("--tokens", cmd.generate.tokens, "new tokens to generate (bytes for a byte-level run)")
      ->check(integer_in(1, int64_t{1} << 24))
      ->default_str("200");
  gen->add_option("--temperature", cmd.generate.temperature, "sampling temperature; 0: greedy")
      ->check(number_in(0.0, 1e6))
      ->default_str("0.8");
  gen->add_option("--top-k", cmd.generate.top_k, "sample from the K most likely tokens; 0: all")
      ->check(integer_in(0, std::numeric_limits<int64_t>::max()))
      ->default_str("40");
  gen->add_option("--seed", cmd.generate.seed, "sampling seed")
      ->check(integer_in(0, std::numeric_limits<int64_t>::max()))
      ->default_str("1");
  gen->add_flag("--fully-quantized", cmd.generate.fully_quantized,
                "generate at lambda_w = lambda_a = 1 instead of the checkpoint's lambdas");
  gen->add_flag("--no-ema", cmd.generate.no_ema, "the raw weights, not the checkpoint's average of them (train.ema)");

  auto* smp = app.add_subcommand("sample", "class-conditional images from a DiT run as a PNG grid");
  smp->footer(kSampleHelp);
  smp->add_option("RUN_DIR", cmd.sample.run_dir, "a DiT run directory or its packed export")->required();
  smp->add_option("--out", cmd.sample.out, "the PNG file to write")->required();
  smp->add_option("--n", cmd.sample.n, "images per class (--class all) or in total")
      ->check(integer_in(1, int64_t{1} << 16))
      ->default_str("8");
  smp->add_option("--class", cmd.sample.cls, "a class index, or all")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            if (s == "all") return "";
            return integer_in(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())(s).empty()
                       ? ""
                       : fmt::format("'{}': expected a class index or all", s);
          },
          ""))
      ->default_str("all");
  smp->add_option("--steps", cmd.sample.steps, "integration steps")
      ->check(integer_in(1, int64_t{1} << 20))
      ->default_str("10");
  smp->add_option("--cfg", cmd.sample.cfg, "classifier-free guidance weight (0 unconditional, 1 conditional)")
      ->check(number_in(0.0, 1e3))
      ->default_str("2");
  smp->add_option("--solver", cmd.sample.solver, "euler | heun")
      ->check(CLI::IsMember({"euler", "heun"}))
      ->default_str("heun");
  smp->add_option("--seed", cmd.sample.seed, "noise seed")
      ->check(integer_in(0, std::numeric_limits<int64_t>::max()))
      ->default_str("1");
  smp->add_flag("--fully-quantized", cmd.sample.fully_quantized,
                "sample at lambda_w = lambda_a = 1 instead of the checkpoint's lambdas");
  smp->add_flag("--no-ema", cmd.sample.no_ema, "the raw weights, not the checkpoint's average of them (train.ema)");

  auto* quant = app.add_subcommand("quantize", "data-free ternarization of a full-precision run");
  quant->footer(kQuantizeHelp);
  quant
      ->add_option("SRC", cmd.quantize.src_run_dir,
                   "the full-precision run, or a config whose init_from is the model (e.g. a GGUF)")
      ->required();
  quant->add_option("--out", cmd.quantize.out, "the run directory to write (run.dir and run.name come from it)")
      ->required();
  add_sets(quant, &cmd.quantize.sets,
           "override a value of the resulting config, e.g. quant.weight.granularity=per_channel");
  quant->add_flag("--json", cmd.quantize.json, "print the result as one JSON object");
  quant->add_flag("--no-ema", cmd.quantize.no_ema, "the raw weights, not the checkpoint's average of them (train.ema)");

  auto* exp =
      app.add_subcommand("export", fmt::format("export the ternary model: {}", fmt::join(export_format_names(), ", ")));
  exp->footer(export_help());
  exp->add_option("RUN_DIR", cmd.export_.run_dir, "a run directory")->required();
  exp->add_option("--format", cmd.export_.format, fmt::format("{}", fmt::join(export_format_names(), " | ")))
      ->required()
      ->check(CLI::IsMember(export_format_names()));
  exp->add_option("--out", cmd.export_.out, "the directory or file to write; must not exist")->required();
  exp->add_option("--gguf-type", cmd.export_.gguf_type,
                  fmt::format("{} (default tq2_0): the quantized linears' type",
                              fmt::join(interop::gguf_type_choices(/*codes=*/true), " | ")))
      ->check(CLI::IsMember(interop::gguf_type_choices(/*codes=*/true)));
  exp->add_option("--gguf-float", cmd.export_.gguf_float,
                  fmt::format("{} (default f32, exact): the type of embeddings, an untied head and unquantized "
                              "linears",
                              fmt::join(interop::gguf_type_choices(/*codes=*/false), " | ")))
      ->check(CLI::IsMember(interop::gguf_type_choices(/*codes=*/false)));
  exp->add_flag("--gguf-force-relu2", cmd.export_.gguf_force_relu2,
                "write a relu2_glu model although llama.cpp computes SiLU (for runtimes that honour "
                "bitnet.hidden_activation); prints a warning");
  exp->add_option("--name", cmd.export_.name, "general.name in the GGUF file (default: the run directory's name)");
  exp->add_flag("--no-ema", cmd.export_.no_ema, "the raw weights, not the checkpoint's average of them (train.ema)");

  auto* config = app.add_subcommand("config", "the resolved config, or the reference of every key");
  config->footer(
      "Prints CONFIG (no CONFIG: the built-in quickstart) as training resolves it: validated, with every\n"
      "default filled in, as run.dir/run.name/config.resolved.yaml will hold it. --reference prints every\n"
      "key instead (type, default, allowed values, meaning) as Markdown: docs/config.md is that output.\n");
  config->add_option("CONFIG", cmd.config.config, "a YAML config");
  add_sets(config, &cmd.config.sets, "override one config value (same checks as the file; repeatable)");
  config->add_flag("--reference", cmd.config.reference, "print the reference of every config key (Markdown)");

  auto* plan = app.add_subcommand("plan", "memory per rank of a config, term by term");
  plan->footer(
      "Plans the memory one rank needs to train CONFIG with --world-size ranks: parameters, gradients,\n"
      "optimizer state (by dist.shard), saved activations (train.batch_size x data.seq_len, with\n"
      "train.activation_checkpointing; every block recomputed under dist.shard parameters),\n"
      "communication buffers, the largest transient, and what the forward keeps per quantized weight;\n"
      "then the set-up peak and rank 0's host memory at a checkpoint. The model is built on the meta\n"
      "device (nothing allocated, no weights or data read). Exits 2 when the total or the set-up peak\n"
      "exceeds device.memory_gb, else the GPU's memory (device.type cuda), else this machine's RAM.\n"
      "docs/distributed.md explains the terms.\n");
  plan->add_option("CONFIG", cmd.plan.config, "a YAML config")->required();
  plan->add_option("--world-size", cmd.plan.world_size, "data-parallel ranks")
      ->check(integer_in(1, 1 << 20))
      ->default_str("1");
  add_sets(plan, &cmd.plan.sets, "override one config value (same checks as the file; repeatable)");

  auto* version = app.add_subcommand("version", "print the version");
  auto* capability = version->add_flag("--cpu-capability", cmd.version.cpu_capability,
                                       "print only the CPU kernel set LibTorch runs (default, avx2 or avx512)");
  version
      ->add_flag("--cpu-isas", cmd.version.cpu_isas,
                 "print only the CPU kernel sets this CPU can run, space-separated, in ATEN_CPU_CAPABILITY's "
                 "spelling (default always; avx2 with FMA; avx512 with F, BW, VL and DQ)")
      ->excludes(capability);

  for (auto* sub : app.get_subcommands({})) sub->group("");  // usage() lists them

  std::string current = argc > 1 ? argv[1] : "";
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    const auto subs = app.get_subcommands();
    std::fputs(subs.empty() ? usage() : subs.front()->help().c_str(), stdout);
    return cmd;
  } catch (const CLI::ParseError& e) {
    const auto subs = app.get_subcommands();
    refuse(subs.empty() ? current : subs.front()->get_name(), e);
  }
  cmd.name = app.get_subcommands().front()->get_name();
  return cmd;
}

}  // namespace bitqat::apps
