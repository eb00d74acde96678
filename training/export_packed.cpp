#include "training/export_packed.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "bitlinear/convert.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "training/run_state.hpp"

namespace bitqat::training {
namespace fs = std::filesystem;
namespace {}  // namespace

PackedStats packed_stats(const torch::nn::Module& module) {
  PackedStats s;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (const auto* p = m->as<bitlinear::ops::PackedBitLinearImpl>()) {
      ++s.layers;
      s.packed_bytes += p->weight_bytes();
      s.bf16_bytes += 2 * p->in_features * p->out_features;
    }
  }
  return s;
}

PackedStats export_packed(LoadedRun& run, const std::string& run_dir, const std::string& out_dir) {
  if (fs::exists(out_dir)) {
    throw core::UserError(fmt::format("{} already exists; choose a new --out path (exports never overwrite)", out_dir));
  }
  auto& module = run.task->module();
  std::vector<std::string> layers;
  try {
    layers = bitlinear::pack_for_inference(module);
  } catch (const std::invalid_argument& e) {
    throw core::UserError(fmt::format("{}: cannot export as packed: {}", run_dir, e.what()));
  }
  if (layers.empty()) throw core::UserError(fmt::format("{}: the model has no quantized layers to pack", run_dir));
  const auto stats = packed_stats(module);

  const std::string tmp = fmt::format("{}.tmp-{}", out_dir, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  checkpoints::ManifestWriter writer(tmp);
  writer.add("config.resolved.yaml", core::to_yaml_string(run.cfg.resolved()));
  writer.add("model.safetensors", checkpoints::encode_safetensors(model_tensors(module), {{"format", kPackedFormat}}));
  writer.finish({{"format", kPackedFormat},
                 {"version", kPackedVersion},
                 {"source", run.checkpoint},
                 {"step", run.step},
                 {"quantized_layers", layers},
                 {"packed_bytes", stats.packed_bytes},
                 {"bf16_bytes", stats.bf16_bytes}});
  core::rename_dir_atomic(tmp, out_dir);
  return stats;
}

bool is_packed_export(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  if (!fs::is_regular_file(path)) return false;
  const auto m = nlohmann::json::parse(core::read_file(path), nullptr, false);
  return m.is_object() && m.value("format", std::string()) == kPackedFormat;
}

LoadedRun load_packed_export(const std::string& dir, const at::Device& device) {
  const auto md = checkpoints::read_manifest_dir(dir, "packed export", kPackedFormat, kPackedVersion,
                                                 {"config.resolved.yaml", "model.safetensors"});
  LoadedRun run{Config::load_string(md.contents.at("config.resolved.yaml"), dir + "/config.resolved.yaml", {},
                                    /*check_files=*/false),
                nullptr, dir,
                checkpoints::json_int(md.manifest, "step", dir + "/manifest.json", 0, checkpoints::kMaxStep, 0)};
  run.task = make_task(run.cfg, device);
  // The freshly built layers are packed from their initial weights, then every packed tensor is
  // replaced by the export's (strict: names and shapes must match exactly).
  bitlinear::pack_for_inference(run.task->module());
  const auto st = checkpoints::decode_safetensors(md.contents.at("model.safetensors"), dir + "/model.safetensors");
  load_model_tensors(run.task->module(), st.by_name(), dir + "/model.safetensors");
  run.task->module().to(device);
  return run;
}

}  // namespace bitqat::training
