#include "checkpoints/manifest.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints {
namespace fs = std::filesystem;

ManifestWriter::ManifestWriter(std::string dir) : dir_(std::move(dir)) {}

void ManifestWriter::add(const std::string& name, const std::string& bytes) {
  core::write_file_atomic(dir_ + "/" + name, bytes);
  files_[name] = {{"size", bytes.size()}, {"crc32", core::crc32(bytes.data(), bytes.size())}};
}

void ManifestWriter::add_safetensors(const std::string& name, const NamedTensors& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  core::FileWriter out(dir_ + "/" + name);
  write_safetensors(out, tensors, metadata);
  out.commit();
  files_[name] = {{"size", out.size()}, {"crc32", out.crc32()}};
}

void ManifestWriter::add_written(const std::string& name, int64_t size, uint32_t crc32) {
  files_[name] = {{"size", size}, {"crc32", crc32}};
}

std::string ManifestDir::text(const std::string& name) const {
  const auto v = files.at(name)->view();
  return std::string(v.begin(), v.end());
}

nlohmann::json ManifestWriter::finish(nlohmann::json fields) {
  fields["files"] = files_;
  core::write_file_atomic(dir_ + "/manifest.json", fields.dump(2) + "\n");
  return fields;
}

int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& origin, int64_t lo, int64_t hi) {
  if (!obj.is_object() || !obj.contains(key)) {
    throw core::UserError(fmt::format("{}: '{}' is missing (expected an integer in [{}, {}])", origin, key, lo, hi));
  }
  const auto& v = obj[key];
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) ||
      v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
    throw core::UserError(fmt::format("{}: {} = {}: expected an integer in [{}, {}]", origin, key, v.dump(), lo, hi));
  }
  return v.get<int64_t>();
}

int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& origin, int64_t lo, int64_t hi,
                 int64_t fallback) {
  if (obj.is_object() && !obj.contains(key)) return fallback;
  return json_int(obj, key, origin, lo, hi);
}

std::string json_string(const nlohmann::json& obj, const std::string& key, const std::string& origin) {
  if (!obj.is_object() || !obj.contains(key) || !obj[key].is_string()) {
    throw core::UserError(fmt::format("{}: {} = {}: expected a string", origin, key,
                                      obj.is_object() && obj.contains(key) ? obj[key].dump() : "(missing)"));
  }
  return obj[key].get<std::string>();
}

ManifestDir read_manifest_dir(const std::string& dir, const std::string& what, const std::string& format, int version,
                              const std::vector<std::string>& required, const std::vector<std::string>& optional) {
  const std::string path = dir + "/manifest.json";
  if (!fs::is_regular_file(path)) {
    throw core::UserError(fmt::format(
        "{} {}: manifest.json is missing: the {} is incomplete (its write was interrupted)", what, dir, what));
  }
  ManifestDir out;
  out.manifest = nlohmann::json::parse(core::read_file(path), nullptr, false);
  const auto& m = out.manifest;
  if (m.is_discarded() || !m.is_object()) throw core::UserError(fmt::format("{}: not a JSON object", path));
  const auto fmt_seen = m.contains("format") && m["format"].is_string() ? m["format"].get<std::string>() : "?";
  const auto ver_seen = m.contains("version") ? m["version"].dump() : "?";
  if (fmt_seen != format || !m["version"].is_number_integer() || m["version"].get<int64_t>() != version) {
    throw core::UserError(
        fmt::format("{} {}: format {} version {} is not {} version {} (written by another program "
                    "or an incompatible bitqat)",
                    what, dir, fmt_seen, ver_seen, format, version));
  }
  if (!m.contains("files") || !m["files"].is_object()) {
    throw core::UserError(fmt::format("{}: 'files' is missing or not an object", path));
  }
  std::vector<std::string> check = required;
  for (const auto& f : optional) {
    if (m["files"].contains(f)) check.push_back(f);
  }
  for (const auto& f : check) {
    if (!m["files"].contains(f))
      throw core::UserError(fmt::format("{} {}: the manifest does not list {}", what, dir, f));
    const auto& entry = m["files"][f];
    const std::string origin = fmt::format("{} (files.{})", path, f);
    const auto want_size = static_cast<uint64_t>(json_int(entry, "size", origin, 0, INT64_MAX));
    const auto want_crc = static_cast<uint32_t>(json_int(entry, "crc32", origin, 0, UINT32_MAX));
    const std::string file = dir + "/" + f;
    if (!fs::is_regular_file(file)) throw core::UserError(fmt::format("{} {}: {} is missing", what, dir, f));
    auto mapped = core::MappedFile::open(file);
    if (mapped->size() != want_size) {
      throw core::UserError(fmt::format("{} {}: {} is {} bytes, the manifest says {}: the {} is truncated or corrupted",
                                        what, dir, f, mapped->size(), want_size, what));
    }
    const uint32_t crc = mapped->crc32_streaming();
    if (crc != want_crc) {
      throw core::UserError(fmt::format("{} {}: {} has CRC-32 {:08x}, the manifest says {:08x}: the {} is corrupted",
                                        what, dir, f, crc, want_crc, what));
    }
    out.files[f] = std::move(mapped);
  }
  return out;
}

}  // namespace bitqat::checkpoints
