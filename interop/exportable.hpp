// The one "can this layer be exported to X" check: each export states what its format can hold
// (weight types, scale granularities and sources, dimension multiples, activations, bias, SubLN), and a layer
// that does not fit is a UserError naming the format, the layer and the config key to change.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"

namespace bitqat::interop {

struct LinearRequirements {
  std::string format;  // "gguf export", "hf-bitnet export"
  std::string holder;  // what stores the layer, for messages: "the bitnet layout", "BitNetForCausalLM"
  std::vector<bitlinear::WeightQuant> weight_types = {bitlinear::WeightQuant::kTernary};
  std::vector<bitlinear::Granularity> granularities = {bitlinear::Granularity::kPerTensor};
  std::string granularity_reason;  // why the others do not fit
  bool learned_scales = true;      // quant.weight.scale: learned (per-channel scales from a parameter)
  std::string learned_scale_reason;
  int64_t group_multiple = 1;      // per_group: group_size must be a multiple of this
  std::string group_reason;
  int64_t in_multiple = 1;  // in_features must be a multiple of this
  std::string in_reason;
  int64_t out_multiple = 1;  // out_features must be a multiple of this
  std::string out_reason;
  bool per_token_8bit_activations = false;  // quant.activation must be per_token with 8 bits
  std::optional<bool> sub_norm;             // the layer must (true) or must not (false) have a SubLN
};

// Every export refuses to overwrite: core::UserError "<path> already exists; choose a new --out path"
// when `path` exists (a file, a directory or a dangling link).
void check_new_output(const std::string& path);

// Throws core::UserError "<format>: <name> <what does not fit>" for the first requirement the
// layer misses; also for a layer whose latent weights were replaced (a packed model).
void check_exportable(const std::string& name, const bitlinear::BitLinearImpl& layer, const LinearRequirements& req);

}  // namespace bitqat::interop
