// The quantization section of a config (`quant.weight`, `quant.activation`) <-> QuantSpec.
#pragma once
#include <yaml-cpp/yaml.h>

#include "bitlinear/quant_spec.hpp"
#include "core/config.hpp"

namespace bitqat::bitlinear {

// Reads quant.weight {type, granularity, group_size, estimator, clip, eps} and
// quant.activation {type, bits, estimator, clip, eps}; other keys of `quant` belong to the trainer.
QuantSpec quant_spec_from_yaml(const core::Node& quant);
// Writes {weight: {...}, activation: {...}} into *out.
void quant_spec_to_yaml(const QuantSpec& spec, YAML::Node* out);

}  // namespace bitqat::bitlinear
