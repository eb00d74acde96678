// The `packed` export: a model with every quantized BitLinear as 2-bit codes and scales in the
// project's packed format (cuda/ternary_format.hpp, held by bitlinear/ops PackedBitLinear) and
// everything else in full precision. `bitqat eval` and `bitqat generate` open it like a run
// (training/run_loader.hpp).
//
//   PATH/manifest.json         {format: bitqat-packed, version: 1, source, step, files: {name: {size,
//                              crc32}}, quantized_layers, packed_bytes, bf16_bytes}; written last
//                              (checkpoints/manifest.hpp)
//   PATH/config.resolved.yaml  the run's config (model shape, quantization, data for eval)
//   PATH/model.safetensors     the packed model's tensors: a packed layer X holds X.packed.packed
//                              (int32 words [N, Kp/16]), X.packed.scales (float32) and, with SubLN,
//                              X.packed.norm_weight; no latent weights
#pragma once
#include <torch/nn/module.h>

#include <map>
#include <string>

namespace bitqat::interop {

constexpr const char* kPackedFormat = "bitqat-packed";
constexpr int kPackedVersion = 1;

struct PackedStats {
  int64_t layers = 0;        // packed BitLinears
  int64_t packed_bytes = 0;  // their 2-bit words + float32 scales
  int64_t bf16_bytes = 0;    // the same weights in bf16 (2 bytes each)
  double ratio() const { return packed_bytes > 0 ? static_cast<double>(bf16_bytes) / packed_bytes : 0.0; }
};

// Sizes of the packed layers of a module (after bitlinear::ops::pack_for_inference).
PackedStats packed_stats(const torch::nn::Module& module);

// Packs `module` in place (its quantized layers lose their latent weights) and writes the export
// directory atomically with `config_yaml` (the run's resolved config), recording the source
// checkpoint and its step. `out_dir` must not exist; a model with nothing to pack, or a layer whose
// quantization has no packed form, is a UserError naming `what` (the run).
PackedStats export_packed(torch::nn::Module& module, const std::string& config_yaml, const std::string& source,
                          int64_t step, const std::string& out_dir, const std::string& what);

// Whether `dir` holds a manifest naming the packed format.
bool is_packed_export(const std::string& dir);

// A packed export read and verified (format, version, sizes and CRCs; UserError otherwise).
struct PackedExport {
  std::string dir;
  std::string config_yaml;  // config.resolved.yaml's text
  int64_t step = 0;
  std::map<std::string, at::Tensor> tensors;
};
PackedExport read_packed_export(const std::string& dir);

// Packs the freshly built model of the export's config and loads the export's tensors into it
// (strict: names and shapes must match exactly).
void load_packed_weights(torch::nn::Module& module, const PackedExport& e);

}  // namespace bitqat::interop
