// Training data: byte-level text, llm.c token shards and Fashion-MNIST, sampled so that every batch
// is a pure function of (seed, step, row): resuming needs only the step, and the global batch is the
// same however it is split over ranks and accumulation micro-steps.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/schema.hpp"

namespace bitqat::data {

struct Batch {
  at::Tensor inputs;   // LM: int64 [B, T]; images: float32 [B, 1, 28, 28] in [0, 1]
  at::Tensor targets;  // LM: int64 [B, T] (inputs shifted by one); images: int64 [B]
  // Images: int64 [B] on the CPU, a global id per sample that does not depend on how the global
  // batch is split (training: step * global batch + row; validation: the test-set index), for
  // per-sample randomness (the flow-matching noise). Undefined for token data.
  at::Tensor rows;
};

enum class DataKind { kTokens, kImages };

class Source {
 public:
  virtual ~Source() = default;
  virtual DataKind kind() const = 0;
  virtual int64_t vocab_size() const = 0;  // 256 for bytes; the shard vocabulary; 10 classes for images
  // Micro-batch `micro` of global step `step` for `rank` of `world`: rows [(micro*world + rank)*B, +B)
  // of that step's global batch of B*world*accum samples. A pure function of its arguments and the
  // seed, so the global batch is the same for any split with the same B*world*accum. Throws
  // std::invalid_argument for step < 0, B < 1, rank outside [0, world) or micro outside [0, accum).
  virtual Batch train_batch(int64_t step, int micro, int rank, int world, int64_t batch_size, int accum) const = 0;
  // Deterministic held-out batches (the same every call), at most max_batches of batch_size.
  virtual std::vector<Batch> val_batches(int64_t batch_size, int64_t max_batches) const = 0;
  virtual int64_t train_size() const = 0;  // tokens or samples
  virtual std::string describe() const = 0;
};

// Where the data comes from: byte-level text, llm.c token shards, Fashion-MNIST.
enum class SourceKind { kText, kShards, kFashionMnist };
inline constexpr std::array<core::EnumName<SourceKind>, 3> kSourceKindNames = {
    {{SourceKind::kText, "text"}, {SourceKind::kShards, "shards"}, {SourceKind::kFashionMnist, "fashion_mnist"}}};
inline const char* to_string(SourceKind k) { return core::name_of(kSourceKindNames, k); }

// The data: section. Its keys are declared once (data/source.cpp); each kind takes a subset.
struct DataConfig {
  SourceKind kind = SourceKind::kText;
  int64_t seq_len = 256;
  std::string path;                                       // text
  double val_fraction = 0.05;                             // text, and shards without a val glob
  std::string train;                                      // shards: glob
  std::string val;                                        // shards: glob (optional)
  int64_t vocab_size = 50304;                             // shards (above 65,536: uint32 shards)
  std::string dir = "/usr/share/datasets/fashion-mnist";  // fashion_mnist
  core::Node node;                                        // for error locations when reading the files

  // Validates keys and values and, with check_files, that the named files exist (a run directory's
  // config is read without its data by export and generate).
  static DataConfig from_yaml(const core::Node& data, bool check_files = true);
  // Every key of the kind, defaults filled in, into the mapping `out` (paths as given).
  void write(YAML::Node out) const;
  // The reference rows of every key, each naming the kinds it applies to.
  static std::vector<core::KeyReference> reference();

  // What the data is, from the config alone (no file is read): tokens or images, the vocabulary (256
  // bytes, the shards' vocab_size, 10 classes) and whether the tokens are bytes.
  DataKind data_kind() const;
  int64_t vocab() const;
  bool is_bytes() const { return kind == SourceKind::kText; }
  // Images: channels, height, width of every sample (Fashion-MNIST: 1, 28, 28); tokens: empty.
  std::vector<int64_t> image_shape() const;
  // The same settings with every path made absolute against the working directory, so that a run's
  // config.resolved.yaml still finds its data from another directory. Writes into `data`.
  void write_absolute_paths(YAML::Node data) const;
};

// kAll: train and validation splits; kValidation: only the held-out split is read (the training
// split is empty and train_batch throws), for `bitqat eval`.
enum class Split { kAll, kValidation };
std::unique_ptr<Source> make_source(const DataConfig& cfg, uint64_t seed, Split split = Split::kAll);

// llm.c token shards (dev/data/data_common.py): 256 int32 header (magic, version, token count), then
// the tokens: magic 20240520 version 1 with uint16 tokens (GPT-2's layout), or magic 20240801
// version 7 with uint32 tokens (Llama 3's, for vocabularies above 65,536).
constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int32_t kShard32Magic = 20240801;
constexpr int32_t kShard32Version = 7;
void write_shard(const std::string& path, const std::vector<uint16_t>& tokens);
void write_shard32(const std::string& path, const std::vector<uint32_t>& tokens);
// uint16 shards only; throws UserError naming the file for a wrong magic, version or size.
std::vector<uint16_t> read_shard(const std::string& path);
// Either layout, as uint32 tokens; the same errors.
std::vector<uint32_t> read_shard_tokens(const std::string& path);
// The token count of a shard of either layout, from its header alone (checked against the file size).
int64_t read_shard_count(const std::string& path);

// Counter-based sampling: a 64-bit hash of (seed, a, b) (splitmix64 rounds).
uint64_t mix3(uint64_t seed, uint64_t a, uint64_t b);

}  // namespace bitqat::data
