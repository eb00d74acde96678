#include "interop/init_source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "interop/gguf_llama.hpp"
#include "interop/hf_llama.hpp"
#include "interop/llama_tensor_names.hpp"
#include "models/factory.hpp"
#include "models/state_dict.hpp"

namespace bitqat::interop {
namespace {

namespace fs = std::filesystem;

// The model a run directory's resolved config describes (kind lm only). A vocabulary left to the
// data (0) is taken from the embedding the checkpoint holds.
std::optional<models::LMConfig> run_lm_config(const std::string& run_dir, const models::LazyTensors& tensors) {
  const auto path = run_dir + "/config.resolved.yaml";
  if (!fs::is_regular_file(path)) return std::nullopt;
  const auto model = core::Node::load_file(path).child("model");
  const auto parsed = models::ModelConfig::from_yaml(model);
  if (parsed.kind != models::ModelKind::kLM) return std::nullopt;
  auto c = parsed.lm;
  if (c.vocab_size == 0) {
    const auto it = tensors.find("embed.weight");
    if (it != tensors.end() && it->second.shape.size() == 2) c.vocab_size = it->second.shape[0];
  }
  return c;
}

InitSource from_checkpoint(const std::string& ck_dir, const std::string& run_dir, InitKind kind) {
  InitSource s;
  s.kind = kind;
  s.origin = ck_dir + "/model.safetensors";
  const auto ck = std::make_shared<checkpoints::CheckpointData>(checkpoints::read_checkpoint(ck_dir));
  s.tensors = models::lazy_tensors({ck->model.begin(), ck->model.end()}, [ck](const at::Tensor& t) { ck->release(t); });
  s.lm = run_lm_config(run_dir, s.tensors);
  return s;
}

}  // namespace

namespace {

InitSource open_source(const std::string& path, const std::string& where);

}  // namespace

InitSource read_init_source(const std::string& path, const std::string& where) {
  auto s = open_source(path, where);
  s.path = path;
  return s;
}

namespace {

InitSource open_source(const std::string& path, const std::string& where) {
  if (path.empty()) throw core::UserError(fmt::format("{} is empty: expected a path", where));
  if (!fs::exists(path)) {
    throw core::UserError(fmt::format("{} = {}: no such file or directory", where, path));
  }
  // A trailing '/' would make the checkpoint's run directory below one level off.
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (is_gguf_file(path)) {
    auto ck = load_gguf_llama(path);
    InitSource s;
    s.kind = InitKind::kGgufLlama;
    s.origin = path;
    s.tensors = std::move(ck.tensors);
    s.lm = ck.config;
    return s;
  }
  if (fs::is_directory(p)) {
    if (is_hf_model_dir(path)) {
      auto ck = load_hf_llama(path);
      InitSource s;
      s.kind = InitKind::kHfLlama;
      s.origin = path;
      s.tensors = std::move(ck.tensors);
      s.lm = ck.config;
      return s;
    }
    if (fs::is_regular_file(p / "config.resolved.yaml")) {
      const auto latest = checkpoints::find_latest_checkpoint(path + "/checkpoints");
      if (!latest) {
        throw core::UserError(fmt::format(
            "{} = {}: a bitqat run directory without a complete checkpoint under checkpoints/", where, path));
      }
      return from_checkpoint(*latest, path, InitKind::kBitqatRun);
    }
    if (fs::is_regular_file(p / "manifest.json")) {
      // RUN_DIR/checkpoints/step_XXXXXXXX: the run's config sits two levels up.
      const auto run_dir = fs::absolute(p).lexically_normal().parent_path();
      return from_checkpoint(path, run_dir.parent_path().string(), InitKind::kBitqatCheckpoint);
    }
    throw core::UserError(
        fmt::format("{} = {}: a directory that is neither a Hugging Face model (config.json), a bitqat run "
                    "(config.resolved.yaml) nor a bitqat checkpoint (manifest.json)",
                    where, path));
  }
  if (p.extension() == ".gguf") {
    throw core::UserError(fmt::format("{} = {}: named .gguf but not a GGUF file (its first bytes are not the magic "
                                      "'GGUF')",
                                      where, path));
  }
  const auto file = std::make_shared<checkpoints::SafetensorsFile>(checkpoints::load_safetensors(path));
  InitSource s;
  s.kind = InitKind::kSafetensors;
  s.origin = path;
  s.tensors = models::lazy_tensors(file->by_name(), [file](const at::Tensor& t) { file->release(t); });
  if (s.tensors.count("model.embed_tokens.weight")) {
    throw core::UserError(
        fmt::format("{} = {}: holds Hugging Face tensor names; point {} at the model's directory so that its "
                    "config.json is read too",
                    where, path, where));
  }
  return s;
}

}  // namespace

std::string init_model_from(const std::string& path, torch::nn::Module& model, const std::string& where) {
  return init_model_from(read_init_source(path, where), model, where);
}

SourceFit fit_source(const models::LMConfig& model, const models::LMConfig& source) {
  SourceFit fit;
  auto taken = source;
  if (model.sub_norm && !source.sub_norm) {
    taken.sub_norm = true;
    for (const auto& e : llama_tensors(model)) {
      if (e.row->presence == LlamaPresence::kSubNorm) fit.inserted.push_back(e.bitqat + ".weight");
    }
  }
  fit.differences = model.differences(taken);
  return fit;
}

std::string SourceFit::note() const {
  if (inserted.empty()) return {};
  return fmt::format("; inserted SubLN: {} new RMSNorm weights before attn.o and ffn.down, initialised to ones",
                     inserted.size());
}

std::string init_model_from(const InitSource& src, torch::nn::Module& model, const std::string& where) {
  const auto& path = src.path;
  SourceFit fit;
  if (const auto* lm = dynamic_cast<const models::BitLMImpl*>(&model); lm && src.lm) {
    fit = fit_source(lm->config, *src.lm);
    if (!fit.differences.empty()) {
      std::string msg = fmt::format("{} = {}: the config's model does not match the {} source: {}", where, path,
                                    to_string(src.kind), fmt::join(fit.differences, "; "));
      if (src.kind == InitKind::kHfLlama || src.kind == InitKind::kGgufLlama) {
        msg += fmt::format("; this checkpoint needs model: {}", lm_config_yaml(*src.lm));
      }
      throw core::UserError(msg);
    }
  }
  // Inserted norms keep the model's own values (ones); everything else comes from the source.
  const auto load = models::load_initial_tensors(model, src.tensors, src.origin, fit.inserted);
  const auto inserted = fit.note() + load.note();
  const auto text = fmt::format("initialised {} tensors from {} ({}){}", src.tensors.size(), src.origin,
                                to_string(src.kind), inserted);
  spdlog::info("{}", text);
  return text;
}

}  // namespace bitqat::interop
