// Crash-safe checkpoint directories: RUN_DIR/checkpoints/step_XXXXXXXX/ holding model, optimizer and
// extra tensors (safetensors) and state.json, plus manifest.json written last with every file's size
// and CRC-32. Files are written tensor by tensor and read through memory maps (checkpoints/safetensors.hpp). The
// directory is assembled under a temporary name and renamed into place, so a kill at any moment leaves either the
// previous checkpoints or a complete new one.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "checkpoints/safetensors.hpp"

namespace bitqat::checkpoints {

constexpr const char* kCheckpointFormat = "bitqat-checkpoint";
constexpr int kCheckpointVersion = 1;
constexpr int64_t kMaxStep = 99999999;  // step_XXXXXXXX directories hold 8 digits

// A file of a sharded checkpoint as its writer saw it.
struct ShardFile {
  std::string name;
  int64_t size = 0;
  uint32_t crc32 = 0;
};

// Sharded checkpoints (data parallelism that splits the optimizer state): each rank writes its part
// as optimizer-rankRRRRR-of-WWWWW.safetensors into the directory being assembled, the main rank then
// writes the rest and a manifest that lists every rank's file with its size and CRC-32, and renames
// the directory into place (the same atomic step as an unsharded checkpoint). The protocol, with
// barriers between the steps: the main rank calls begin_checkpoint; every rank calls
// write_checkpoint_shard; the main rank gathers the ShardFiles and calls write_checkpoint.
std::string optimizer_shard_name(int rank, int world);

struct CheckpointData {
  int64_t step = 0;
  NamedTensors model;                               // model.safetensors
  NamedTensors optimizer;                           // optimizer.safetensors (unsharded)
  // Sharded optimizer state. Writing: the ranks' files, already in the directory (then `optimizer` is
  // not written). Reading: their tensors, by rank (then `optimizer` is empty).
  std::vector<ShardFile> optimizer_shard_files;
  std::vector<NamedTensors> optimizer_shards;
  NamedTensors extra;                               // extra.safetensors (RNG states, ...)
  NamedTensors ema;                                 // ema.safetensors, only when not empty (train.ema)
  bool has_ema = false;  // the manifest lists ema.safetensors (written when set or when ema is not empty)
  nlohmann::json state = nlohmann::json::object();  // state.json
  // Read checkpoints: the mapped files the tensors view. release(t) drops the pages of a tensor
  // that was copied elsewhere from the resident set (reading it again fetches them from the file).
  std::vector<std::shared_ptr<const core::MappedFile>> mappings;
  void release(const at::Tensor& t) const;
};

// Clears leftovers of interrupted writes and creates the (empty) directory the checkpoint of `step` is
// assembled in; returns its path, the same on every rank.
std::string begin_checkpoint(const std::string& checkpoints_dir, int64_t step);
// Writes this rank's optimizer shard into the directory begin_checkpoint made.
ShardFile write_checkpoint_shard(const std::string& tmp_dir, int rank, int world, const NamedTensors& tensors);

// Writes checkpoints_dir/step_XXXXXXXX atomically, then keeps only the newest `keep_last` complete
// checkpoints (keep_last <= 0 keeps all) and removes leftovers of interrupted writes. Returns the path.
std::string write_checkpoint(const std::string& checkpoints_dir, const CheckpointData& data, int keep_last);

// The newest checkpoint directory with a manifest (its files are verified by read_checkpoint).
std::optional<std::string> find_latest_checkpoint(const std::string& checkpoints_dir);

// Loads and verifies a checkpoint (checkpoints/manifest.hpp): manifest format and version, every file
// present with the size and CRC-32 the manifest records, and the step the same in the directory name,
// the manifest and state.json (an integer in [0, kMaxStep]). Anything else is a UserError naming the
// directory and the file.
CheckpointData read_checkpoint(const std::string& dir);

}  // namespace bitqat::checkpoints
