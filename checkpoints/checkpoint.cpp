#include "checkpoints/checkpoint.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <filesystem>
#include <regex>

#include "checkpoints/manifest.hpp"
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

std::string optimizer_shard_name(int rank, int world) {
  return fmt::format("optimizer-rank{:05d}-of-{:05d}.safetensors", rank, world);
}

std::string begin_checkpoint(const std::string& checkpoints_dir, int64_t step) {
  fs::create_directories(checkpoints_dir);
  // Leftovers of writes that were killed never count; clear them.
  for (const auto& e : fs::directory_iterator(checkpoints_dir)) {
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
  }
  const fs::path tmp = fs::path(checkpoints_dir) / fmt::format(".tmp-step_{:08d}", step);
  fs::create_directories(tmp);
  return tmp.string();
}

ShardFile write_checkpoint_shard(const std::string& tmp_dir, int rank, int world, const NamedTensors& tensors) {
  ShardFile f;
  f.name = optimizer_shard_name(rank, world);
  core::FileWriter out(tmp_dir + "/" + f.name);
  write_safetensors(out, tensors, {{"format", "bitqat-optimizer-shard"},
                                   {"rank", std::to_string(rank)},
                                   {"world_size", std::to_string(world)}});
  out.commit();
  f.size = static_cast<int64_t>(out.size());
  f.crc32 = out.crc32();
  return f;
}

std::string write_checkpoint(const std::string& checkpoints_dir, const CheckpointData& data, int keep_last) {
  const std::string name = fmt::format("step_{:08d}", data.step);
  const fs::path final_dir = fs::path(checkpoints_dir) / name;
  fs::path tmp = fs::path(checkpoints_dir) / fmt::format(".tmp-{}", name);
  // A sharded checkpoint's directory was begun (and filled by the ranks) already.
  if (data.optimizer_shard_files.empty() || !fs::is_directory(tmp)) tmp = begin_checkpoint(checkpoints_dir, data.step);

  ManifestWriter writer(tmp.string());
  writer.add_safetensors("model.safetensors", data.model, {{"format", "bitqat-model"}});
  if (data.optimizer_shard_files.empty()) {
    writer.add_safetensors("optimizer.safetensors", data.optimizer);
  } else {
    for (const auto& f : data.optimizer_shard_files) {
      if (!fs::is_regular_file(tmp / f.name) || static_cast<int64_t>(fs::file_size(tmp / f.name)) != f.size) {
        throw core::UserError(fmt::format("checkpoint of step {}: the shard file {} is missing or not {} bytes in {}",
                                          data.step, f.name, f.size, tmp.string()));
      }
      writer.add_written(f.name, f.size, f.crc32);
    }
  }
  writer.add_safetensors("extra.safetensors", data.extra);
  if (data.has_ema || !data.ema.empty()) {
    writer.add_safetensors("ema.safetensors", data.ema, {{"format", "bitqat-model"}});
  }
  writer.add("state.json", data.state.dump(2) + "\n");
  nlohmann::json fields = {{"format", kCheckpointFormat}, {"version", kCheckpointVersion}, {"step", data.step}};
  if (!data.optimizer_shard_files.empty()) fields["optimizer_shards"] = data.optimizer_shard_files.size();
  writer.finish(fields);
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

void CheckpointData::release(const at::Tensor& t) const {
  if (!t.defined() || !t.is_cpu()) return;
  for (const auto& m : mappings) m->release(t.data_ptr(), static_cast<size_t>(t.nbytes()));
}

CheckpointData read_checkpoint(const std::string& dir) {
  // A sharded checkpoint's manifest says how many optimizer shards it has (read_manifest_dir then
  // checks the file table and every file).
  int64_t shards = 0;
  {
    const std::string mpath = dir + "/manifest.json";
    std::ifstream in(mpath);
    const auto m = nlohmann::json::parse(in, nullptr, false);
    if (!m.is_discarded() && m.is_object() && m.contains("optimizer_shards")) {
      shards = json_int(m, "optimizer_shards", mpath, 1, 1 << 20);
    }
  }
  std::vector<std::string> required = {"model.safetensors", "extra.safetensors", "state.json"};
  if (shards == 0) required.emplace_back("optimizer.safetensors");
  for (int64_t r = 0; r < shards; ++r) {
    required.push_back(optimizer_shard_name(static_cast<int>(r), static_cast<int>(shards)));
  }
  const auto md = read_manifest_dir(dir, "checkpoint", kCheckpointFormat, kCheckpointVersion, required,
                                    {"ema.safetensors"});
  CheckpointData d;
  const std::string mpath = dir + "/manifest.json";
  d.step = json_int(md.manifest, "step", mpath, 0, kMaxStep);
  // The step is written three times: in the directory's name, the manifest and state.json.
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  if (std::regex_match(name, kStepDir) && std::stoll(name.substr(5)) != d.step) {
    throw core::UserError(
        fmt::format("{}: step = {} disagrees with the directory name {}: the checkpoint was "
                    "tampered with or copied into the wrong place",
                    mpath, d.step, name));
  }
  const std::string spath = dir + "/state.json";
  d.state = nlohmann::json::parse(md.text("state.json"), nullptr, false);
  if (d.state.is_discarded() || !d.state.is_object()) {
    throw core::UserError(fmt::format("{}: not a JSON object", spath));
  }
  const int64_t state_step = json_int(d.state, "step", spath, 0, kMaxStep);
  if (state_step != d.step) {
    throw core::UserError(
        fmt::format("{}: step = {} disagrees with manifest.json's step = {}", spath, state_step, d.step));
  }
  // The tensors view the mapped files: loading copies each into place and releases its pages.
  for (const auto& [field, name] :
       {std::pair{&d.model, "model.safetensors"}, std::pair{&d.optimizer, "optimizer.safetensors"},
        std::pair{&d.extra, "extra.safetensors"}}) {
    if (shards > 0 && field == &d.optimizer) continue;
    *field = decode_safetensors(md.files.at(name), dir + "/" + name).tensors;
    d.mappings.push_back(md.files.at(name));
  }
  for (int64_t r = 0; r < shards; ++r) {
    const auto name = optimizer_shard_name(static_cast<int>(r), static_cast<int>(shards));
    d.optimizer_shards.push_back(decode_safetensors(md.files.at(name), dir + "/" + name).tensors);
    d.mappings.push_back(md.files.at(name));
  }
  if (md.files.count("ema.safetensors")) {
    d.has_ema = true;
    d.ema = decode_safetensors(md.files.at("ema.safetensors"), dir + "/ema.safetensors").tensors;
    d.mappings.push_back(md.files.at("ema.safetensors"));
  } else if (fs::exists(dir + "/ema.safetensors")) {
    throw core::UserError(fmt::format(
        "checkpoint {}: ema.safetensors is there but manifest.json does not list it: the checkpoint was altered "
        "after it was written",
        dir));
  }
  return d;
}

}  // namespace bitqat::checkpoints
