// The `packed` export: a run's model with every quantized BitLinear as 2-bit codes and scales in
// the project's packed format (cuda/ternary_format.hpp, held by bitlinear/ops PackedBitLinear) and
// everything else in full precision. `bitqat eval` and `bitqat generate` open it like a run.
//
//   PATH/manifest.json         {format: bitqat-packed, version: 1, source, step, files: {name: {size,
//                              crc32}}, quantized_layers, packed_bytes, bf16_bytes}; written last
//   PATH/config.resolved.yaml  the run's config (model shape, quantization, data for eval)
//   PATH/model.safetensors     the packed model's tensors: a packed layer X holds X.packed.packed
//                              (int32 words [N, Kp/16]), X.packed.scales (float32) and, with SubLN,
//                              X.packed.norm_weight; no latent weights
#pragma once
#include <string>

#include "training/run_loader.hpp"

namespace bitqat::training {

constexpr const char* kPackedFormat = "bitqat-packed";
constexpr int kPackedVersion = 1;

struct PackedStats {
  int64_t layers = 0;        // packed BitLinears
  int64_t packed_bytes = 0;  // their 2-bit words + float32 scales
  int64_t bf16_bytes = 0;    // the same weights in bf16 (2 bytes each)
  double ratio() const { return packed_bytes > 0 ? static_cast<double>(bf16_bytes) / packed_bytes : 0.0; }
};

// Sizes of the packed layers of a module (after bitlinear::pack_for_inference).
PackedStats packed_stats(const torch::nn::Module& module);

// Packs the run's model in place (its quantized layers lose their latent weights) and writes the
// export directory atomically; `out_dir` must not exist. Returns the sizes.
PackedStats export_packed(LoadedRun& run, const std::string& run_dir, const std::string& out_dir);

// Whether `dir` holds a manifest naming the packed format.
bool is_packed_export(const std::string& dir);
// Opens a packed export as a run: config, data source, and a model whose quantized layers are
// packed (manifest format, version, sizes and CRCs are checked; UserError otherwise).
LoadedRun load_packed_export(const std::string& dir, const at::Device& device);

}  // namespace bitqat::training
