#include "training/export_packed.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "bitlinear/convert.hpp"
#include "bitlinear/ops/w158a8_linear.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "training/run_state.hpp"

namespace bitqat::training {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFiles[] = {"config.resolved.yaml", "model.safetensors"};

nlohmann::json read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  if (!fs::is_regular_file(path)) {
    throw core::UserError(
        fmt::format("{}: manifest.json is missing: not a packed export (or its write was interrupted)", dir));
  }
  const auto m = nlohmann::json::parse(core::read_file(path), nullptr, false);
  if (m.is_discarded() || !m.is_object()) throw core::UserError(fmt::format("{}: manifest.json is not JSON", dir));
  return m;
}

}  // namespace

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
  const std::map<std::string, std::string> files = {
      {"config.resolved.yaml", core::to_yaml_string(run.cfg.resolved())},
      {"model.safetensors", checkpoints::encode_safetensors(model_tensors(module), {{"format", kPackedFormat}})},
  };
  nlohmann::json manifest = {{"format", kPackedFormat},       {"version", kPackedVersion},
                             {"source", run.checkpoint},      {"step", run.step},
                             {"quantized_layers", layers},    {"packed_bytes", stats.packed_bytes},
                             {"bf16_bytes", stats.bf16_bytes}};
  for (const auto& [name, bytes] : files) {
    core::write_file_atomic(tmp + "/" + name, bytes);
    manifest["files"][name] = {{"size", bytes.size()}, {"crc32", core::crc32(bytes.data(), bytes.size())}};
  }
  core::write_file_atomic(tmp + "/manifest.json", manifest.dump(2) + "\n");
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
  const auto manifest = read_manifest(dir);
  if (manifest.value("format", std::string()) != kPackedFormat || manifest.value("version", -1) != kPackedVersion) {
    throw core::UserError(fmt::format("{}: format {} version {} is not {} version {} (another program or bitqat)", dir,
                                      manifest.value("format", std::string("?")), manifest.value("version", -1),
                                      kPackedFormat, kPackedVersion));
  }
  std::map<std::string, std::string> contents;
  for (const char* f : kFiles) {
    if (!manifest.contains("files") || !manifest["files"].contains(f)) {
      throw core::UserError(fmt::format("{}: the manifest does not list {}", dir, f));
    }
    auto bytes = core::read_file(dir + "/" + f);
    const auto& e = manifest["files"][f];
    if (bytes.size() != e.value("size", uint64_t{0}) ||
        core::crc32(bytes.data(), bytes.size()) != e.value("crc32", uint32_t{0})) {
      throw core::UserError(
          fmt::format("{}: {} does not match the size and CRC-32 in the manifest: the export is corrupted", dir, f));
    }
    contents[f] = std::move(bytes);
  }
  LoadedRun run{Config::load_string(contents["config.resolved.yaml"], dir + "/config.resolved.yaml"), nullptr, nullptr,
                dir, manifest.value("step", int64_t{0})};
  run.source = data::make_source(data::DataConfig::from_yaml(run.cfg.data), run.cfg.run.seed);
  run.task = make_task(run.cfg, *run.source, device);
  // The freshly built layers are packed from their initial weights, then every packed tensor is
  // replaced by the export's (strict: names and shapes must match exactly).
  bitlinear::pack_for_inference(run.task->module());
  const auto st = checkpoints::decode_safetensors(contents["model.safetensors"], dir + "/model.safetensors");
  load_model_tensors(run.task->module(), st.by_name(), dir + "/model.safetensors");
  run.task->module().to(device);
  return run;
}

}  // namespace bitqat::training
