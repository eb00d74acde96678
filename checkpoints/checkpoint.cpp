#include "checkpoints/checkpoint.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints {
namespace fs = std::filesystem;
namespace {

const std::regex kStepDir("step_[0-9]{8}");

std::vector<fs::path> step_dirs(const std::string& dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory() && std::regex_match(e.path().filename().string(), kStepDir)) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool has_manifest(const fs::path& d) { return fs::is_regular_file(d / "manifest.json"); }

}  // namespace

std::string write_checkpoint(const std::string& checkpoints_dir, const CheckpointData& data, int keep_last) {
  fs::create_directories(checkpoints_dir);
  // Leftovers of writes that were killed never count; clear them.
  for (const auto& e : fs::directory_iterator(checkpoints_dir)) {
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
  }
  const std::string name = fmt::format("step_{:08d}", data.step);
  const fs::path final_dir = fs::path(checkpoints_dir) / name;
  const fs::path tmp = fs::path(checkpoints_dir) / fmt::format(".tmp-{}-{}", name, ::getpid());
  fs::create_directories(tmp);

  std::vector<std::pair<std::string, std::string>> files = {
      {"model.safetensors", encode_safetensors(data.model, {{"format", "bitqat-model"}})},
      {"optimizer.safetensors", encode_safetensors(data.optimizer)},
      {"extra.safetensors", encode_safetensors(data.extra)},
      {"state.json", data.state.dump(2) + "\n"},
  };
  nlohmann::json manifest = {{"format", kCheckpointFormat}, {"version", kCheckpointVersion}, {"step", data.step}};
  for (const auto& [file, bytes] : files) {
    core::write_file_atomic((tmp / file).string(), bytes);
    manifest["files"][file] = {{"size", bytes.size()}, {"crc32", core::crc32(bytes.data(), bytes.size())}};
  }
  core::write_file_atomic((tmp / "manifest.json").string(), manifest.dump(2) + "\n");
  if (fs::exists(final_dir)) {
    // Rewriting a step (a resumed run that checkpoints the same step again): swap, then drop the old.
    const fs::path old = fs::path(checkpoints_dir) / fmt::format(".tmp-old-{}-{}", name, ::getpid());
    fs::rename(final_dir, old);
    core::rename_dir_atomic(tmp.string(), final_dir.string());
    fs::remove_all(old);
  } else {
    core::rename_dir_atomic(tmp.string(), final_dir.string());
  }

  if (keep_last > 0) {
    std::vector<fs::path> complete;
    for (const auto& d : step_dirs(checkpoints_dir)) {
      if (has_manifest(d)) complete.push_back(d);
    }
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < complete.size(); ++i) fs::remove_all(complete[i]);
  }
  return final_dir.string();
}

std::optional<std::string> find_latest_checkpoint(const std::string& checkpoints_dir) {
  const auto dirs = step_dirs(checkpoints_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (has_manifest(*it)) return it->string();
  }
  return std::nullopt;
}

CheckpointData read_checkpoint(const std::string& dir) {
  const std::string mpath = dir + "/manifest.json";
  if (!fs::is_regular_file(mpath)) {
    throw core::UserError(
        fmt::format("checkpoint {}: manifest.json is missing: the checkpoint is incomplete (its "
                    "write was interrupted)",
                    dir));
  }
  const auto manifest = nlohmann::json::parse(core::read_file(mpath), nullptr, false);
  if (manifest.is_discarded() || !manifest.is_object() || !manifest.contains("files")) {
    throw core::UserError(fmt::format("checkpoint {}: manifest.json is not a valid manifest", dir));
  }
  if (manifest.value("format", std::string()) != kCheckpointFormat ||
      manifest.value("version", -1) != kCheckpointVersion) {
    throw core::UserError(
        fmt::format("checkpoint {}: format {} version {} is not {} version {} (written by another "
                    "program or an incompatible bitqat)",
                    dir, manifest.value("format", std::string("?")), manifest.value("version", -1), kCheckpointFormat,
                    kCheckpointVersion));
  }
  std::map<std::string, std::string> contents;
  for (const auto& f : {"model.safetensors", "optimizer.safetensors", "extra.safetensors", "state.json"}) {
    if (!manifest["files"].contains(f)) {
      throw core::UserError(fmt::format("checkpoint {}: the manifest does not list {}", dir, f));
    }
    const std::string path = dir + "/" + f;
    if (!fs::is_regular_file(path)) {
      throw core::UserError(fmt::format("checkpoint {}: {} is missing", dir, f));
    }
    auto bytes = core::read_file(path);
    const auto& entry = manifest["files"][f];
    const uint64_t want_size = entry.value("size", uint64_t{0});
    if (bytes.size() != want_size) {
      throw core::UserError(
          fmt::format("checkpoint {}: {} is {} bytes, the manifest says {}: the checkpoint is "
                      "truncated or corrupted",
                      dir, f, bytes.size(), want_size));
    }
    const uint32_t want_crc = entry.value("crc32", uint32_t{0});
    const uint32_t crc = core::crc32(bytes.data(), bytes.size());
    if (crc != want_crc) {
      throw core::UserError(
          fmt::format("checkpoint {}: {} has CRC-32 {:08x}, the manifest says {:08x}: the file is "
                      "corrupted",
                      dir, f, crc, want_crc));
    }
    contents[f] = std::move(bytes);
  }
  CheckpointData d;
  d.step = manifest.value("step", int64_t{0});
  d.model = decode_safetensors(contents["model.safetensors"], dir + "/model.safetensors").tensors;
  d.optimizer = decode_safetensors(contents["optimizer.safetensors"], dir + "/optimizer.safetensors").tensors;
  d.extra = decode_safetensors(contents["extra.safetensors"], dir + "/extra.safetensors").tensors;
  d.state = nlohmann::json::parse(contents["state.json"], nullptr, false);
  if (d.state.is_discarded()) throw core::UserError(fmt::format("checkpoint {}: state.json is not JSON", dir));
  return d;
}

}  // namespace bitqat::checkpoints
