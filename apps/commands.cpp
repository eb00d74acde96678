#include "apps/commands.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "apps/args.hpp"
#include "apps/quickstart_config.hpp"
#include "core/error.hpp"
#include "models/generate.hpp"
#include "models/lm.hpp"
#include "training/config.hpp"
#include "training/export_gguf.hpp"
#include "training/export_hf_bitnet.hpp"
#include "training/export_packed.hpp"
#include "training/quantize.hpp"
#include "training/run_loader.hpp"
#include "training/trainer.hpp"

namespace bitqat::apps {
namespace {

int print_help(const char* text) {
  std::fputs(text, stdout);
  return 0;
}

at::Device default_device() { return torch::cuda::is_available() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU); }

}  // namespace

int rank_from_environment() {
  for (const char* var : {"RANK", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

int cmd_version(const std::vector<std::string>&) {
  std::printf("bitqat %s (LibTorch %s, %s)\n", BITQAT_VERSION, BITQAT_TORCH_VERSION,
              torch::cuda::is_available() ? "CUDA available" : "no CUDA device");
  return 0;
}

int cmd_train(const std::vector<std::string>& argv) {
  const auto a = parse_args("train", argv, {}, {"resume"});
  if (a.help) {
    return print_help(
        "usage: bitqat train [CONFIG.yaml] [--set key.path=value ...] [--resume]\n\n"
        "Trains the model a YAML config describes (configs/ has examples; without CONFIG the built-in\n"
        "quickstart runs: a ternary byte-level LM on the KJV Bible, prepared by data/prepare_kjv.sh).\n"
        "  --set k.p=v  override one config value (same checks as the file; repeatable)\n"
        "  --resume     continue from the newest complete checkpoint in run.dir/run.name\n"
        "Results: run.dir/run.name/{config.resolved.yaml, metrics.jsonl, checkpoints/}.\n"
        "A config's `init_from: PATH` starts a fresh run from existing weights: a bitqat run, checkpoint or\n"
        "safetensors file, or a Hugging Face Llama directory (configs/finetune_*.yaml fine-tune a\n"
        "full-precision run into a ternary one).\n"
        "Launch several processes (launch/local.sh, torchrun --no-python, SLURM) for data parallelism.\n");
  }
  if (a.positional.size() > 1) {
    throw core::UserError(fmt::format("bitqat train takes one config file, got {} arguments", a.positional.size()));
  }
  const auto cfg = a.positional.empty()
                       ? training::Config::load_string(kQuickstartYaml, "<built-in quickstart>", a.sets)
                       : training::Config::load_file(a.positional[0], a.sets);
  training::TrainOptions options;
  options.resume = a.flags.count("resume") > 0;
  const auto result = training::train(cfg, options);
  if (rank_from_environment() == 0) {
    std::printf("trained %lld steps; last loss %.4f%s; results in %s\n", static_cast<long long>(result.final_step),
                result.last_loss,
                result.last_val_loss ? fmt::format(", val_loss {:.4f}", *result.last_val_loss).c_str() : "",
                result.run_dir.c_str());
  }
  return 0;
}

int cmd_eval(const std::vector<std::string>& argv) {
  const auto a = parse_args("eval", argv, {"batches"}, {"json"});
  if (a.help) {
    return print_help(
        "usage: bitqat eval RUN_DIR [--json] [--batches N]\n\n"
        "Validation loss of the run's newest checkpoint (plus val_bpb for byte-level text, val_acc for\n"
        "images). --json prints one JSON object. RUN_DIR may be a packed export (bitqat export).\n");
  }
  if (a.positional.size() != 1) throw core::UserError("bitqat eval needs exactly one RUN_DIR");
  const auto device = default_device();
  auto run = training::load_run(a.positional[0], device);
  const int64_t batches = a.get_int("batches", run.cfg.train.eval_batches);
  if (batches < 1) throw core::UserError("--batches must be at least 1");
  const auto val = run.source->val_batches(run.cfg.train.batch_size, batches);
  const auto ev = run.task->evaluate(val, device);
  if (a.flags.count("json")) {
    nlohmann::json j = {
        {"run_dir", a.positional[0]}, {"checkpoint", run.checkpoint}, {"step", run.step}, {"val_loss", ev.loss}};
    if (!ev.metric_name.empty()) j[ev.metric_name] = ev.metric;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s (step %lld): val_loss %.4f", run.checkpoint.c_str(), static_cast<long long>(run.step), ev.loss);
    if (!ev.metric_name.empty()) std::printf(", %s %.4f", ev.metric_name.c_str(), ev.metric);
    std::printf("\n");
  }
  return 0;
}

int cmd_generate(const std::vector<std::string>& argv) {
  const auto a = parse_args("generate", argv, {"prompt", "tokens", "temperature", "top-k", "seed"}, {});
  if (a.help) {
    return print_help(
        "usage: bitqat generate RUN_DIR --prompt TEXT [--tokens 200] [--temperature 0.8] [--top-k 40] [--seed 1]\n\n"
        "Samples a continuation from a byte-level language model run or a packed export (temperature 0:\n"
        "greedy).\n");
  }
  if (a.positional.size() != 1) throw core::UserError("bitqat generate needs exactly one RUN_DIR");
  if (!a.values.count("prompt")) throw core::UserError("bitqat generate needs --prompt TEXT");
  auto run = training::load_run(a.positional[0], default_device());
  auto lm = std::dynamic_pointer_cast<models::BitLMImpl>(run.task->module_ptr());
  if (!lm) throw core::UserError(fmt::format("{}: generate needs a language model run", a.positional[0]));
  if (run.source->vocab_size() != 256) {
    throw core::UserError(
        fmt::format("{}: generate works on byte-level text models (vocabulary 256); this run has "
                    "vocabulary {}",
                    a.positional[0], run.source->vocab_size()));
  }
  const std::string prompt = a.values.at("prompt");
  std::vector<int64_t> tokens(prompt.begin(), prompt.end());
  for (auto& t : tokens) t &= 0xff;
  const int64_t n = a.get_int("tokens", 200);
  const double temperature = a.get_double("temperature", 0.8);
  const int64_t top_k = a.get_int("top-k", 40);
  const auto seed = static_cast<uint64_t>(a.get_int("seed", 1));
  if (n < 0 || temperature < 0 || top_k < 0) {
    throw core::UserError("--tokens, --temperature and --top-k must not be negative");
  }
  const auto out = models::generate(*lm, tokens, n, temperature, top_k, seed);
  std::string text(prompt);
  for (size_t i = tokens.size(); i < out.size(); ++i) text.push_back(static_cast<char>(out[i]));
  std::printf("%s\n", text.c_str());
  return 0;
}

int cmd_quantize(const std::vector<std::string>& argv) {
  const auto a = parse_args("quantize", argv, {"out"}, {"json"});
  if (a.help) {
    return print_help(
        "usage: bitqat quantize SRC_RUN_DIR --out OUT_RUN_DIR [--set key.path=value ...] [--json]\n\n"
        "Data-free ternarization: the newest checkpoint of a (full-precision) run becomes a ternary model\n"
        "without training (absmean ternary weights per tensor, 8-bit per-token activations, lambda 1, on\n"
        "the layers quant.include / quant.exclude select), and its validation loss is reported. This is\n"
        "the baseline a progressive fine-tune (configs/finetune_*.yaml) must beat.\n"
        "  --out DIR    the run directory to write (run.dir and run.name come from it): config.resolved.yaml,\n"
        "               metrics.jsonl with the validation loss, checkpoints/step_00000000; `bitqat eval`,\n"
        "               `bitqat train --resume` and init_from accept it\n"
        "  --set k.p=v  override a value of the resulting config, e.g. quant.weight.granularity=per_channel\n"
        "  --json       print the result as one JSON object\n");
  }
  if (a.positional.size() != 1) throw core::UserError("bitqat quantize needs exactly one SRC_RUN_DIR");
  if (!a.values.count("out")) throw core::UserError("bitqat quantize needs --out OUT_RUN_DIR");
  const auto r = training::quantize_run(a.positional[0], a.values.at("out"), a.sets, default_device());
  if (a.flags.count("json")) {
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

int cmd_export(const std::vector<std::string>& argv) {
  const auto a = parse_args("export", argv, {"format", "out", "gguf-type", "name"}, {});
  if (a.help) {
    return print_help(
        "usage: bitqat export RUN_DIR --format packed|hf-bitnet|gguf --out PATH [--gguf-type tq2_0|tq1_0]\n"
        "                     [--name NAME]\n\n"
        "Exports the fully quantized model (lambda = 1) of a run's newest checkpoint:\n"
        "  packed     a directory with 2-bit ternary weights + scales and the rest in full precision;\n"
        "             `bitqat eval PATH` and `bitqat generate PATH` run it like a run directory\n"
        "  hf-bitnet  a directory Hugging Face transformers loads as BitNetForCausalLM (config.json,\n"
        "             model.safetensors with packed uint8 weights); needs model.ffn relu2_glu, sub_norm,\n"
        "             per_tensor ternary weights, 8-bit per-token activations\n"
        "  gguf       one GGUF file for llama.cpp's bitnet architecture (TQ2_0 by default, --gguf-type\n"
        "             tq1_0 for 1.69 bits/weight) with a byte-level tokenizer; needs relu2_glu, sub_norm,\n"
        "             tied embeddings, vocabulary 256 and dims that are multiples of 256\n"
        "  --name     general.name in the GGUF file (default: the run directory's name)\n"
        "PATH must not exist. The export runs on the CPU.\n");
  }
  if (a.positional.size() != 1) throw core::UserError("bitqat export needs exactly one RUN_DIR");
  if (!a.values.count("format")) throw core::UserError("bitqat export needs --format packed|hf-bitnet|gguf");
  if (!a.values.count("out")) throw core::UserError("bitqat export needs --out PATH");
  const std::string run_dir = a.positional[0], format = a.values.at("format"), out = a.values.at("out");
  if (format != "packed" && format != "hf-bitnet" && format != "gguf") {
    throw core::UserError(fmt::format("--format {}: expected packed, hf-bitnet or gguf", format));
  }
  if ((a.values.count("gguf-type") || a.values.count("name")) && format != "gguf") {
    throw core::UserError("--gguf-type and --name apply to --format gguf only");
  }
  auto gguf_type = checkpoints::gguf::GgmlType::kTQ2_0;
  if (a.values.count("gguf-type")) {
    const auto& t = a.values.at("gguf-type");
    if (t == "tq1_0") {
      gguf_type = checkpoints::gguf::GgmlType::kTQ1_0;
    } else if (t != "tq2_0") {
      throw core::UserError(fmt::format("--gguf-type {}: expected tq2_0 or tq1_0", t));
    }
  }
  if (training::is_packed_export(run_dir)) {
    throw core::UserError(
        fmt::format("{} is a packed export (no latent weights); export from its run directory", run_dir));
  }
  if (std::filesystem::exists(out)) {
    throw core::UserError(fmt::format("--out {} already exists; exports never overwrite", out));
  }
  auto run = training::load_run(run_dir, at::Device(at::kCPU));
  if (format == "packed") {
    const auto s = training::export_packed(run, run_dir, out);
    std::printf(
        "wrote %s: %lld quantized layers, %lld bytes packed (2-bit codes + scales) vs %lld bytes in bf16: "
        "%.2fx smaller\n",
        out.c_str(), static_cast<long long>(s.layers), static_cast<long long>(s.packed_bytes),
        static_cast<long long>(s.bf16_bytes), s.ratio());
    return 0;
  }
  auto lm = std::dynamic_pointer_cast<models::BitLMImpl>(run.task->module_ptr());
  if (!lm) throw core::UserError(fmt::format("{}: --format {} needs a language model run", run_dir, format));
  if (format == "hf-bitnet") {
    training::export_hf_bitnet(*lm, out);
    std::printf("wrote %s: BitNetForCausalLM (config.json, model.safetensors)\n", out.c_str());
    return 0;
  }
  std::string name = a.values.count("name") ? a.values.at("name") : "";
  if (name.empty()) name = std::filesystem::path(run_dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(run_dir).lexically_normal().parent_path().filename().string();
  const auto bytes = training::export_gguf(*lm, out, gguf_type, name);
  std::printf("wrote %s: GGUF bitnet, %s ternary tensors, %lld bytes\n", out.c_str(),
              checkpoints::gguf::to_string(gguf_type), static_cast<long long>(bytes));
  return 0;
}

}  // namespace bitqat::apps
