// Directories whose manifest.json lists every file with its size and CRC-32, written last, so that a
// directory counts only once it is complete: bitqat checkpoints and packed exports. The manifest is
// {format, version, ..., files: {name: {size, crc32}}}; reading checks the format, the version and
// every listed file, and refuses any field of the wrong JSON type with a UserError naming it.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoints/safetensors.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints {

// Assembles a directory (normally a temporary one, renamed into place by the caller).
class ManifestWriter {
 public:
  explicit ManifestWriter(std::string dir);
  // Writes one file atomically and records its size and CRC-32.
  void add(const std::string& name, const std::string& bytes);
  // The same for a safetensors file, streamed one tensor at a time (never encoded whole in memory).
  void add_safetensors(const std::string& name, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});
  // A file another process wrote into the directory (a rank's shard), with its size and CRC-32.
  void add_written(const std::string& name, int64_t size, uint32_t crc32);
  // manifest.json, last: `fields` (format, version, ...) plus the file table. Returns the manifest.
  nlohmann::json finish(nlohmann::json fields);

 private:
  std::string dir_;
  nlohmann::json files_ = nlohmann::json::object();
};

struct ManifestDir {
  nlohmann::json manifest;
  // The required files (and the optional ones listed), verified and mapped (their pages were released after the check: reading
  // them again costs no resident memory beyond what is in use).
  std::map<std::string, std::shared_ptr<const core::MappedFile>> files;
  std::string text(const std::string& name) const;  // a (small) file's bytes
};

// Reads DIR/manifest.json: `format` and `version` must match, and every file of `required` must be
// listed, present, and of the listed size and CRC-32 (computed streaming through the mapping); a file
// of `optional` is checked the same way when the manifest lists it. `what` names the kind of
// directory in errors ("checkpoint", "packed export").
ManifestDir read_manifest_dir(const std::string& dir, const std::string& what, const std::string& format, int version,
                              const std::vector<std::string>& required, const std::vector<std::string>& optional = {});

// Typed fields of a JSON object read from `origin` (a file): a missing key gives `fallback` (or, with
// no fallback, an error); a value of another type or outside [lo, hi] is a UserError naming
// origin, key, value and what was expected.
int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& origin, int64_t lo, int64_t hi);
int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& origin, int64_t lo, int64_t hi,
                 int64_t fallback);
std::string json_string(const nlohmann::json& obj, const std::string& key, const std::string& origin);

}  // namespace bitqat::checkpoints
