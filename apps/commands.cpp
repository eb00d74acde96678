#include "apps/commands.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <ATen/Version.h>

#include "apps/cli.hpp"
#include "apps/exports.hpp"
#include "apps/quickstart_config.hpp"
#include "core/cpu_isa.hpp"
#include "core/error.hpp"
#include "data/bpe_tokenizer.hpp"
#include "data/source.hpp"
#include "interop/export_packed.hpp"
#include "models/dit.hpp"
#include "models/generate.hpp"
#include "models/lm.hpp"
#include "training/config.hpp"
#include "training/distributed.hpp"
#include "training/gpu_status.hpp"
#include "training/image_quality.hpp"
#include "training/memory_plan.hpp"
#include "training/quantize.hpp"
#include "training/run_loader.hpp"
#include "training/sampling.hpp"
#include "training/trainer.hpp"

namespace bitqat::apps {
namespace {

// The GPU when there is one; then, while no GPU check covers inference, a warning says so once.
at::Device default_device() {
  if (!torch::cuda::is_available()) return at::Device(at::kCPU);
  const auto unverified =
      training::gpu_status_warning({training::GpuPath::kInference}, training::gpu_checks_passed());
  if (!unverified.empty()) {
    std::fprintf(stderr, "bitqat: warning: %s CUDA_VISIBLE_DEVICES= runs the tested CPU path.\n", unverified.c_str());
  }
  return at::Device(at::kCUDA, 0);
}

// --no-ema asks for the raw weights; say so when there is no average to leave out (a run without
// train.ema, a packed export or a quantized run, which hold one set of weights).
void note_no_ema(const std::string& command, bool no_ema, bool ema_in_checkpoint, const std::string& checkpoint) {
  if (no_ema && !ema_in_checkpoint) {
    std::fprintf(stderr,
                 "bitqat %s: note: --no-ema: %s holds no average of the weights (train.ema); it runs with the only "
                 "weights it holds\n",
                 command.c_str(), checkpoint.c_str());
  }
}

models::Solver solver_of(const std::string& name) {
  models::Solver s = models::Solver::kHeun;
  if (!models::parse_solver(name, &s)) throw core::UserError(fmt::format("--solver {}: expected euler or heun", name));
  return s;
}

// The image-quality metric of a DiT run (nullopt with --samples 0); the options name what they set.
std::optional<training::QualityResult> dit_quality(const EvalArgs& a, training::LoadedRun& run,
                                                   const data::Source& test, const at::Device& device,
                                                   nlohmann::json* j) {
  auto dit = std::dynamic_pointer_cast<models::BitDiTImpl>(run.task->module_ptr());
  if (!dit) {
    if (a.classifier || a.samples || a.steps || a.cfg || a.solver || a.seed) {
      throw core::UserError(
          fmt::format("--classifier, --samples, --steps, --cfg, --solver and --sample-seed apply to diffusion "
                      "transformer runs; {} is a model.kind {} run",
                      a.run_dir, models::to_string(run.cfg.model.kind)));
    }
    return std::nullopt;
  }
  training::QualityOptions o;
  o.samples = a.samples.value_or(o.samples);
  if (o.samples == 0) return std::nullopt;
  o.steps = a.steps.value_or(o.steps);
  o.cfg = a.cfg.value_or(o.cfg);
  o.solver = solver_of(a.solver.value_or("heun"));
  o.seed = a.seed.value_or(o.seed);
  const std::string dir = a.classifier.value_or("runs/fashion_mnist_fp");
  if (!std::filesystem::exists(dir)) {
    throw core::UserError(fmt::format(
        "--classifier {}: no such run; the DiT quality metric needs a full-precision Fashion-MNIST classifier: train "
        "it with `bitqat train configs/fashion_mnist_fp.yaml`, or pass --classifier DIR, or --samples 0 for the loss "
        "only",
        dir));
  }
  auto classifier = training::load_run(dir, device);
  training::check_quality_classifier(classifier, dir, dit->config);
  const auto q = training::image_quality(*dit, classifier, test, o);
  (*j)["frechet_distance"] = q.frechet;
  (*j)["classifier_accuracy"] = q.accuracy;
  (*j)["samples"] = q.samples;
  (*j)["reference_images"] = q.reference;
  (*j)["classifier"] = classifier.checkpoint;
  (*j)["sampler"] = {{"steps", o.steps}, {"cfg", o.cfg}, {"solver", models::to_string(o.solver)}, {"seed", o.seed}};
  return q;
}

}  // namespace

int cmd_version(const VersionArgs& a) {
  if (a.cpu_capability) {
    std::printf("%s\n", at::get_cpu_capability().c_str());
    return 0;
  }
  if (a.cpu_isas) {
    std::string runs;
    for (const auto isa : core::kCpuIsas) {
      if (core::cpu_runs(isa)) runs += std::string(runs.empty() ? "" : " ") + core::to_string(isa);
    }
    std::printf("%s\n", runs.c_str());
    return 0;
  }
  std::printf("bitqat %s (LibTorch %s, %s, CPU kernels %s)\n", BITQAT_VERSION, BITQAT_TORCH_VERSION,
              torch::cuda::is_available() ? "CUDA available" : "no CUDA device", at::get_cpu_capability().c_str());
  return 0;
}

int cmd_train(const TrainArgs& a) {
  const auto cfg = a.config.empty() ? training::Config::load_string(kQuickstartYaml, "<built-in quickstart>", a.sets)
                                    : training::Config::load_file(a.config, a.sets);
  training::TrainOptions options;
  options.resume = a.resume;
  const auto result = training::train(cfg, options);
  if (result.nothing_to_train) {
    if (training::rank_from_environment() == 0) {
      std::printf(
          "nothing to train: %s is already at step %lld = train.steps (raise train.steps, e.g. --set "
          "train.steps=%lld, to continue it)\n",
          result.run_dir.c_str(), static_cast<long long>(result.final_step),
          static_cast<long long>(2 * result.final_step));
    }
    return 0;
  }
  if (training::rank_from_environment() == 0) {
    std::printf("trained %lld steps; last loss %.4f%s; results in %s\n", static_cast<long long>(result.final_step),
                result.last_loss,
                result.last_val_loss ? fmt::format(", val_loss {:.4f}", *result.last_val_loss).c_str() : "",
                result.run_dir.c_str());
  }
  return 0;
}

int cmd_eval(const EvalArgs& a) {
  const auto device = default_device();
  auto run = training::load_run(a.run_dir, device, !a.no_ema);
  note_no_ema("eval", a.no_ema, run.ema_in_checkpoint, run.checkpoint);
  if (a.fully_quantized) training::set_run_lambdas(run, 1.0, 1.0);
  const auto source = training::open_validation_data(run, a.sets);
  const int64_t batch = run.cfg.train.batch_size;
  const int64_t want = a.batches.value_or(run.cfg.train.eval_batches);
  const auto val = source->val_batches(batch, want);
  if (val.empty()) {
    throw core::UserError(fmt::format("{}: the validation split holds no batch of {} windows", a.run_dir, batch));
  }
  if (a.batches && static_cast<int64_t>(val.size()) < *a.batches) {
    throw core::UserError(fmt::format(
        "--batches {}: the validation split of {} holds {} batch(es) of {} (train.batch_size); expected 1..{}",
        *a.batches, a.run_dir, val.size(), batch, val.size()));
  }
  const auto ev = run.task->evaluate(val, device);
  nlohmann::json j = {{"run_dir", a.run_dir},    {"checkpoint", run.checkpoint}, {"step", run.step},
                      {"val_loss", ev.loss},     {"batches", val.size()},        {"lambda_w", run.lambda_w},
                      {"lambda_a", run.lambda_a}, {"ema", run.ema}};
  if (!ev.metric_name.empty()) j[ev.metric_name] = ev.metric;
  const auto q = dit_quality(a, run, *source, device, &j);
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s (step %lld, lambda_w %.4g, lambda_a %.4g%s): val_loss %.4f", run.checkpoint.c_str(),
                static_cast<long long>(run.step), run.lambda_w, run.lambda_a, run.ema ? ", EMA weights" : "", ev.loss);
    if (!ev.metric_name.empty()) std::printf(", %s %.4f", ev.metric_name.c_str(), ev.metric);
    if (q) {
      std::printf(", frechet_distance %.4f, classifier_accuracy %.4f (%lld samples vs %lld test images)", q->frechet,
                  q->accuracy, static_cast<long long>(q->samples), static_cast<long long>(q->reference));
    }
    std::printf("\n");
  }
  return 0;
}

int cmd_sample(const SampleArgs& a) {
  training::SampleOptions o;
  o.n = a.n;
  if (a.cls != "all") o.cls = std::stoll(a.cls);  // the parser checked that it is an integer
  o.steps = a.steps;
  o.cfg = a.cfg;
  o.solver = solver_of(a.solver);
  o.seed = a.seed;
  o.fully_quantized = a.fully_quantized;
  o.use_ema = !a.no_ema;
  o.out = a.out;
  const auto r = training::sample_run(a.run_dir, o, default_device());
  note_no_ema("sample", a.no_ema, r.ema_in_checkpoint, r.checkpoint);
  std::printf(
      "wrote %s: %lld images (%lld x %lld grid, %lld x %lld pixels) from %s (step %lld, lambda_w %.4g, "
      "lambda_a %.4g%s), %lld %s steps, guidance %.4g, seed %llu\n",
      a.out.c_str(), static_cast<long long>(r.images), static_cast<long long>(r.rows),
      static_cast<long long>(r.columns), static_cast<long long>(r.width), static_cast<long long>(r.height),
      r.checkpoint.c_str(), static_cast<long long>(r.step), r.lambda_w, r.lambda_a, r.ema ? ", EMA weights" : "",
      static_cast<long long>(a.steps),
      a.solver.c_str(), a.cfg, static_cast<unsigned long long>(a.seed));
  return 0;
}

int cmd_generate(const GenerateArgs& a) {
  if (a.prompt.empty()) throw core::UserError("--prompt '': expected a prompt of at least one byte");
  auto run = training::load_run(a.run_dir, default_device(), !a.no_ema);
  note_no_ema("generate", a.no_ema, run.ema_in_checkpoint, run.checkpoint);
  if (a.fully_quantized) training::set_run_lambdas(run, 1.0, 1.0);
  auto lm = std::dynamic_pointer_cast<models::BitLMImpl>(run.task->module_ptr());
  if (!lm) throw core::UserError(fmt::format("{}: generate needs a language model run", a.run_dir));
  const std::string& prompt = a.prompt;
  // Byte-level runs: a token per byte. Tokenized runs: the tokenizer of the run's init_from source.
  std::optional<data::BpeTokenizer> tokenizer;
  std::vector<int64_t> tokens;
  if (run.cfg.data.is_bytes()) {
    for (const char c : prompt) tokens.push_back(static_cast<unsigned char>(c));
  } else {
    tokenizer = training::run_tokenizer(run, a.run_dir);
    if (const auto bad = data::invalid_utf8_offset(prompt)) {
      throw core::UserError(fmt::format(
          "--prompt: byte 0x{:02x} at offset {} starts no valid UTF-8 sequence; {} is a tokenized model, whose "
          "tokenizer encodes UTF-8 text",
          static_cast<unsigned char>(prompt[*bad]), *bad, a.run_dir));
    }
    const auto& v = tokenizer->vocab();
    if (v.add_bos) tokens.push_back(*v.bos);
    const auto ids = tokenizer->encode(prompt);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  const char* unit = tokenizer ? "tokens" : "bytes";
  const int64_t window = lm->config.max_seq_len;
  if (static_cast<int64_t>(tokens.size()) > window) {
    std::fprintf(stderr,
                 "bitqat generate: note: the prompt has %zu %s and the model's window (model.max_seq_len) is %lld: "
                 "the model sees only the prompt's last %lld %s\n",
                 tokens.size(), unit, static_cast<long long>(window), static_cast<long long>(window), unit);
  }
  const auto out = models::generate(*lm, tokens, a.tokens, a.temperature, a.top_k, a.seed);
  std::string text(prompt);
  if (!tokenizer) {
    for (size_t i = tokens.size(); i < out.size(); ++i) text.push_back(static_cast<char>(out[i]));
  } else {
    // The continuation ends at the model's end-of-sequence token, if it makes one; it is printed as
    // valid UTF-8 (what the tokens spell may end inside a character, or not be UTF-8 at all).
    std::vector<int64_t> continuation(out.begin() + static_cast<std::ptrdiff_t>(tokens.size()), out.end());
    const auto& eos = tokenizer->vocab().eos;
    if (eos) continuation.erase(std::find(continuation.begin(), continuation.end(), *eos), continuation.end());
    text += data::printable_utf8(tokenizer->decode(continuation));
  }
  std::printf("%s\n", text.c_str());
  return 0;
}

int cmd_quantize(const QuantizeArgs& a) {
  const auto r = training::quantize_run(a.src_run_dir, a.out, a.sets, default_device(), !a.no_ema);
  if (a.json) {
    nlohmann::json j = {{"run_dir", r.out_dir},
                        {"checkpoint", r.checkpoint},
                        {"source_checkpoint", r.source_checkpoint},
                        {"source_step", r.source_step},
                        {"quantized_layers", r.quantized_layers.size()},
                        {"val_loss", r.eval.loss}};
    if (!r.eval.metric_name.empty()) j[r.eval.metric_name] = r.eval.metric;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("quantized %zu layers of %s (step %lld) data-free: val_loss %.4f", r.quantized_layers.size(),
                r.source_checkpoint.c_str(), static_cast<long long>(r.source_step), r.eval.loss);
    if (!r.eval.metric_name.empty()) std::printf(", %s %.4f", r.eval.metric_name.c_str(), r.eval.metric);
    std::printf("; results in %s\n", r.out_dir.c_str());
  }
  return 0;
}

namespace {

// A Markdown table cell: '|' escaped, nothing else changed.
std::string cell(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

// Config::reference() as Markdown, one table per top-level section, in the reference's order.
std::string reference_markdown() {
  std::string out =
      "# Config reference\n\n"
      "Every key a bitqat config may hold, with its type, default and allowed values. This file is the\n"
      "output of `bitqat config --reference`, which prints the declarations the config parser itself\n"
      "reads (a test keeps the two equal). `bitqat config CONFIG.yaml` prints a config with every default\n"
      "filled in. A key marked *(kind: X)* applies when its section's `kind` is X.\n";
  std::string section;
  for (const auto& r : training::Config::reference()) {
    const auto dot = r.key.find('.');
    const std::string top = dot == std::string::npos ? "(top level)" : r.key.substr(0, dot);
    if (top != section) {
      section = top;
      out += fmt::format("\n## {}\n\n| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |\n",
                         section);
    }
    const std::string key = "`" + r.key + "`" + (r.when.empty() ? "" : " *(" + r.when + ")*");
    out += fmt::format("| {} | {} | {} | {} | {} |\n", key, cell(r.type),
                       r.fallback.empty() ? "" : "`" + cell(r.fallback) + "`", cell(r.allowed), cell(r.meaning));
  }
  return out;
}

}  // namespace

int cmd_config(const ConfigArgs& a) {
  if (a.reference) {
    if (!a.config.empty() || !a.sets.empty()) throw core::UserError("--reference takes no CONFIG and no --set");
    std::fputs(reference_markdown().c_str(), stdout);
    return 0;
  }
  const auto cfg = a.config.empty() ? training::Config::load_string(kQuickstartYaml, "<built-in quickstart>", a.sets)
                                    : training::Config::load_file(a.config, a.sets);
  std::fputs(core::to_yaml_string(cfg.resolved()).c_str(), stdout);
  return 0;
}

int cmd_plan(const PlanArgs& a) {
  // Data files and init_from may be absent: the plan reads neither.
  const auto cfg = training::Config::load_file(a.config, a.sets, /*check_files=*/false);
  const auto plan = training::memory_plan(cfg, a.world_size);
  std::fputs(training::format_memory_plan(plan).c_str(), stdout);
  const auto limit = training::memory_limit(cfg, training::plan_device(cfg));
  if (limit.bytes > 0) {
    std::printf("  %-24s%9.2f GiB %15lld bytes   %s\n", "limit", static_cast<double>(limit.bytes) / (1 << 30),
                static_cast<long long>(limit.bytes), limit.source.c_str());
  }
  std::fflush(stdout);
  training::check_memory_plan(plan, limit);
  return 0;
}

int cmd_export(const ExportArgs& a) {
  const ExportFormat* format = find_export_format(a.format);
  if (!format) throw core::UserError(fmt::format("--format {}: no such export", a.format));  // the parser checks
  if ((!a.gguf_type.empty() || !a.gguf_float.empty() || a.gguf_force_relu2 || !a.name.empty()) &&
      !format->gguf_options) {
    throw core::UserError("--gguf-type, --gguf-float, --gguf-force-relu2 and --name apply to --format gguf only");
  }
  if (interop::is_packed_export(a.run_dir)) {
    throw core::UserError(
        fmt::format("{} is a packed export (no latent weights); export from its run directory", a.run_dir));
  }
  auto run = training::load_run(a.run_dir, at::Device(at::kCPU), !a.no_ema);
  note_no_ema("export", a.no_ema, run.ema_in_checkpoint, run.checkpoint);
  if (run.ema) {
    std::fprintf(stderr,
                 "bitqat export: note: exporting the checkpoint's average of the weights (train.ema); --no-ema "
                 "exports the raw weights\n");
  }
  if (run.lambda_w != 1.0 || run.lambda_a != 1.0) {
    std::fprintf(stderr,
                 "bitqat export: note: %s (step %lld) was trained at lambda_w %.4g, lambda_a %.4g; every export is "
                 "the fully quantized model (lambda 1), which computes something else than the checkpoint did "
                 "(bitqat eval %s --fully-quantized scores it)\n",
                 run.checkpoint.c_str(), static_cast<long long>(run.step), run.lambda_w, run.lambda_a,
                 a.run_dir.c_str());
  }
  std::printf("%s\n", format->write(run, a).c_str());
  return 0;
}

}  // namespace bitqat::apps
