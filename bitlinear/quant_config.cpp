#include "bitlinear/quant_config.hpp"

namespace bitqat::bitlinear {
namespace {

template <class E>
E parse_enum(const core::Node& n, const std::string& key, E fallback, const std::string& choices) {
  if (!n.has(key)) return fallback;
  E v = fallback;
  if (!parse(n.get<std::string>(key, ""), &v)) n.fail(key, "one of " + choices);
  return v;
}

}  // namespace

QuantSpec quant_spec_from_yaml(const core::Node& quant) {
  QuantSpec spec;
  const auto w = quant.child("weight");
  w.allow_only({"type", "granularity", "group_size", "estimator", "clip", "eps"});
  auto& ws = spec.weight;
  ws.type = parse_enum(w, "type", ws.type, weight_quant_choices());
  ws.granularity = parse_enum(w, "granularity", ws.granularity, "per_channel|per_group|per_kernel|per_tensor");
  ws.group_size = w.get_in<int64_t>("group_size", ws.group_size, 1, int64_t{1} << 30);
  ws.estimator = parse_enum(w, "estimator", ws.estimator, "clipped|identity");
  ws.clip = w.get_in<double>("clip", ws.clip, 1e-6, 1e6);
  ws.eps = w.get_in<double>("eps", ws.eps, 1e-12, 1.0);

  const auto a = quant.child("activation");
  a.allow_only({"type", "bits", "estimator", "clip", "eps"});
  auto& as = spec.act;
  as.type = parse_enum(a, "type", as.type, "none|per_tensor|per_token");
  as.bits = a.get_in<int>("bits", as.bits, 2, 8);
  as.estimator = parse_enum(a, "estimator", as.estimator, "clipped|identity");
  as.clip = a.get_in<double>("clip", as.clip, 1e-6, 1e6);
  as.eps = a.get_in<double>("eps", as.eps, 1e-12, 1.0);
  return spec;
}

void quant_spec_to_yaml(const QuantSpec& spec, YAML::Node* out) {
  auto w = (*out)["weight"];
  w["type"] = to_string(spec.weight.type);
  w["granularity"] = to_string(spec.weight.granularity);
  w["group_size"] = spec.weight.group_size;
  w["estimator"] = to_string(spec.weight.estimator);
  w["clip"] = spec.weight.clip;
  w["eps"] = spec.weight.eps;
  auto a = (*out)["activation"];
  a["type"] = to_string(spec.act.type);
  a["bits"] = spec.act.bits;
  a["estimator"] = to_string(spec.act.estimator);
  a["clip"] = spec.act.clip;
  a["eps"] = spec.act.eps;
}

}  // namespace bitqat::bitlinear
