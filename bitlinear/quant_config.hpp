// The quantization section of a config (`quant.weight`, `quant.activation`) <-> QuantSpec, declared
// once as core::Schema key lists (core/schema.hpp): the parse, the resolved YAML and the reference.
#pragma once
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "bitlinear/quant_spec.hpp"
#include "core/config.hpp"
#include "core/schema.hpp"

namespace bitqat::bitlinear {

// Reads quant.weight {type, granularity, group_size, estimator, clip, eps} and
// quant.activation {type, bits, estimator, clip, eps}; other keys of `quant` belong to the trainer.
// Throws core::ConfigError naming file:line, the key, the value and what was expected.
QuantSpec quant_spec_from_yaml(const core::Node& quant);
// Writes {weight: {...}, activation: {...}} into *out.
void quant_spec_to_yaml(const QuantSpec& spec, YAML::Node* out);
// The reference rows of both sub-sections, keys prefixed with `prefix` + "weight." / "activation.".
std::vector<core::KeyReference> quant_spec_reference(const std::string& prefix);

}  // namespace bitqat::bitlinear
