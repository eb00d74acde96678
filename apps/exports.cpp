#include "apps/exports.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "checkpoints/gguf_types.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "interop/export_gguf.hpp"
#include "interop/export_hf_bitnet.hpp"
#include "interop/export_packed.hpp"
#include "models/lm.hpp"

namespace bitqat::apps {
namespace {

namespace gguf = checkpoints::gguf;

const models::BitLMImpl& language_model(const training::LoadedRun& run, const ExportArgs& a) {
  auto lm = std::dynamic_pointer_cast<models::BitLMImpl>(run.task->module_ptr());
  if (!lm) {
    throw core::UserError(fmt::format("{}: --format {} needs a language model run; this is a model.kind {} run",
                                      a.run_dir, a.format, models::to_string(run.cfg.model.kind)));
  }
  return *lm;
}

std::string packed_help() {
  return "a directory with 2-bit ternary weights + scales and the rest in full precision; "
         "`bitqat eval PATH` and `bitqat generate PATH` run it like a run directory";
}

std::string write_packed(training::LoadedRun& run, const ExportArgs& a) {
  const auto s = interop::export_packed(run.task->module(), core::to_yaml_string(run.cfg.resolved()), run.checkpoint,
                                        run.step, a.out, a.run_dir);
  return fmt::format(
      "wrote {}: {} quantized layers, {} bytes packed (2-bit codes + scales) vs {} bytes in bf16: {:.2f}x smaller",
      a.out, s.layers, s.packed_bytes, s.bf16_bytes, s.ratio());
}

std::string hf_bitnet_help() {
  return "a directory Hugging Face transformers loads as BitNetForCausalLM (config.json, "
         "model.safetensors with packed uint8 weights); needs sub_norm, a gated FFN (swiglu: "
         "hidden_act silu, relu2_glu: relu2), per_tensor ternary weights, 8-bit per-token "
         "activations";
}

std::string write_hf_bitnet(training::LoadedRun& run, const ExportArgs& a) {
  interop::export_hf_bitnet(language_model(run, a), a.out);
  return fmt::format("wrote {}: BitNetForCausalLM (config.json, model.safetensors)", a.out);
}

// The weight types' list is the type table's: name, bits per weight and block size.
std::string gguf_help() {
  std::string types;
  const auto names = interop::gguf_type_choices(/*codes=*/true);
  for (size_t i = 0; i < names.size(); ++i) {
    const auto t = interop::parse_gguf_type(names[i]);
    const double bits = 8.0 * static_cast<double>(gguf::block_bytes(t)) / static_cast<double>(gguf::block_size(t));
    types += fmt::format("{}{} ({:g} bits/weight, blocks of {}{})",
                         i == 0                  ? ""
                         : i + 1 == names.size() ? " or "
                                                 : ", ",
                         names[i], bits, gguf::block_size(t), t == gguf::GgmlType::kTQ2_0 ? ", the default" : "");
  }
  return fmt::format(
      "one GGUF file for llama.cpp: architecture bitnet (model.sub_norm true) or llama "
      "(sub_norm false); model.ffn must be swiglu, what llama.cpp computes. Quantized linears as "
      "--gguf-type: {}; a layer's input and output sizes must be multiples of the block. The TQ types "
      "run on llama.cpp's CPU back end only, Q2_0 on its CPU, CUDA and Metal back ends; Q1_0 holds "
      "binary weights. The tokenizer is the source model's (init_from) or, for vocabulary 256, the byte "
      "tokenizer. --gguf-float f16 halves the float tensors. --gguf-force-relu2 writes a relu2_glu "
      "model anyway (llama.cpp computes SiLU instead)",
      types);
}

std::string write_gguf(training::LoadedRun& run, const ExportArgs& a) {
  const auto& lm = language_model(run, a);
  interop::GgufExportOptions o;
  o.type = interop::parse_gguf_type(a.gguf_type.empty() ? "tq2_0" : a.gguf_type);
  o.float_type = interop::parse_gguf_float_type(a.gguf_float.empty() ? "f32" : a.gguf_float);
  o.force_relu2 = a.gguf_force_relu2;
  o.tokenizer_source = run.cfg.init_from;
  o.name = a.name;
  if (o.name.empty()) o.name = std::filesystem::path(a.run_dir).lexically_normal().filename().string();
  if (o.name.empty()) o.name = std::filesystem::path(a.run_dir).lexically_normal().parent_path().filename().string();
  std::vector<std::string> warnings;
  const auto r = interop::export_gguf(lm, a.out, o, &warnings);
  for (const auto& w : warnings) std::fprintf(stderr, "bitqat export: warning: %s\n", w.c_str());
  return fmt::format("wrote {}: GGUF {}, {} quantized tensors, {} bytes", a.out, interop::to_string(r.arch),
                     gguf::to_string(o.type), r.bytes);
}

}  // namespace

const std::vector<ExportFormat>& export_formats() {
  static const std::vector<ExportFormat> formats = {
      {"packed", "2-bit packed (eval/generate load it)", packed_help, false, write_packed},
      {"hf-bitnet", "Hugging Face BitNetForCausalLM", hf_bitnet_help, false, write_hf_bitnet},
      {"gguf", "a llama.cpp GGUF file", gguf_help, true, write_gguf},
  };
  return formats;
}

const ExportFormat* find_export_format(const std::string& name) {
  for (const auto& f : export_formats()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

}  // namespace bitqat::apps
