#include "bitlinear/quant_config.hpp"

#include <cstdint>

namespace bitqat::bitlinear {
namespace {

const core::Schema<WeightQuantSpec>& weight_schema() {
  using W = WeightQuantSpec;
  static const core::Schema<W> s({
      core::key("type", &W::type, "ternary (absmean, BitNet b1.58), binary (sign, BitNet) or none (full precision)")
          .choices(kWeightQuantNames),
      core::key("granularity", &W::granularity,
                "what one weight scale covers: the tensor, an output channel, group_size inputs of a row, or a "
                "convolution's kh x kw kernel")
          .choices(kGranularityNames),
      core::key("group_size", &W::group_size, "inputs per scale with granularity per_group")
          .range(int64_t{1}, int64_t{1} << 30),
      core::key("estimator", &W::estimator,
                "the weight STE: identity, or clipped (zero gradient where |w| / scale > clip)")
          .choices(kEstimatorNames),
      core::key("clip", &W::clip, "the clipped STE's bound, in units of the scale").range(1e-6, 1e6),
      core::key("eps", &W::eps, "added to the absmean scale before dividing; a learned scale's floor").range(1e-12, 1.0),
      core::key("scale", &W::scale,
                "absmean (computed from the weights at each step), or learned: a trained scale per output row "
                "(granularity per_channel), initialised from absmean, with LSQ's gradient")
          .choices(kScaleSourceNames),
  });
  return s;
}

const core::Schema<ActQuantSpec>& act_schema() {
  using A = ActQuantSpec;
  static const core::Schema<A> s({
      core::key("type", &A::type, "activation absmax scaling: per_token (BitNet), per_tensor, or none")
          .choices(kActQuantNames),
      core::key("bits", &A::bits, "activation bits; codes in [-2^(bits-1), 2^(bits-1) - 1]").range(2, 8),
      core::key("estimator", &A::estimator,
                "the activation STE: identity, or clipped (zero gradient where |x| * scale / qmax > clip)")
          .choices(kEstimatorNames),
      core::key("clip", &A::clip, "the clipped STE's bound, in units of the absmax").range(1e-6, 1e6),
      core::key("eps", &A::eps, "floor of the absmax, so a row of zeros has a finite scale").range(1e-12, 1.0),
  });
  return s;
}

}  // namespace

QuantSpec quant_spec_from_yaml(const core::Node& quant) {
  QuantSpec spec;
  const auto weight = quant.child("weight");
  weight_schema().parse_into(weight, &spec.weight);
  if (spec.weight.scale == ScaleSource::kLearned) {
    if (spec.weight.type == WeightQuant::kNone) {
      weight.fail("scale", "absmean: weights of type none have no scale to learn");
    }
    if (spec.weight.granularity != Granularity::kPerChannel) {
      weight.fail("scale", "absmean, or learned together with granularity: per_channel (a learned scale is one "
                           "per output row; granularity is " + to_string(spec.weight.granularity) + ")");
    }
  }
  act_schema().parse_into(quant.child("activation"), &spec.act);
  return spec;
}

void quant_spec_to_yaml(const QuantSpec& spec, YAML::Node* out) {
  weight_schema().write(spec.weight, (*out)["weight"]);
  act_schema().write(spec.act, (*out)["activation"]);
}

std::vector<core::KeyReference> quant_spec_reference(const std::string& prefix) {
  auto rows = weight_schema().reference(prefix + "weight.");
  for (auto& r : act_schema().reference(prefix + "activation.")) rows.push_back(std::move(r));
  return rows;
}

}  // namespace bitqat::bitlinear
