#include "interop/export_packed.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "bitlinear/ops/w158a8_linear.hpp"
#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/exportable.hpp"
#include "models/state_dict.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;

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

PackedStats export_packed(torch::nn::Module& module, const std::string& config_yaml, const std::string& source,
                          int64_t step, const std::string& out_dir, const std::string& what) {
  check_new_output(out_dir);
  std::vector<std::string> layers;
  try {
    layers = bitlinear::ops::pack_for_inference(module);
  } catch (const std::invalid_argument& e) {
    throw core::UserError(fmt::format("{}: cannot export as packed: {}", what, e.what()));
  }
  if (layers.empty()) throw core::UserError(fmt::format("{}: the model has no quantized layers to pack", what));
  const auto stats = packed_stats(module);

  const std::string tmp = fmt::format("{}.tmp-{}", out_dir, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  checkpoints::ManifestWriter writer(tmp);
  writer.add("config.resolved.yaml", config_yaml);
  writer.add_safetensors("model.safetensors", models::model_tensors(module), {{"format", kPackedFormat}});
  writer.finish({{"format", kPackedFormat},
                 {"version", kPackedVersion},
                 {"source", source},
                 {"step", step},
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
  return m.is_object() && m.contains("format") && m["format"] == kPackedFormat;
}

PackedExport read_packed_export(const std::string& dir) {
  const auto md = checkpoints::read_manifest_dir(dir, "packed export", kPackedFormat, kPackedVersion,
                                                 {"config.resolved.yaml", "model.safetensors"});
  PackedExport e;
  e.dir = dir;
  e.config_yaml = md.text("config.resolved.yaml");
  e.step = checkpoints::json_int(md.manifest, "step", dir + "/manifest.json", 0, checkpoints::kMaxStep, 0);
  e.tensors = checkpoints::decode_safetensors(md.files.at("model.safetensors"), dir + "/model.safetensors").by_name();
  return e;
}

void load_packed_weights(torch::nn::Module& module, const PackedExport& e) {
  // The freshly built layers are packed from their initial weights, then every packed tensor is
  // replaced by the export's.
  bitlinear::ops::pack_for_inference(module);
  models::load_model_tensors(module, e.tensors, e.dir + "/model.safetensors");
}

}  // namespace bitqat::interop
