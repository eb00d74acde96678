#include "interop/exportable.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "core/error.hpp"

namespace bitqat::interop {

void check_new_output(const std::string& path) {
  if (std::filesystem::exists(std::filesystem::symlink_status(path))) {
    throw core::UserError(fmt::format("{} already exists; choose a new --out path (exports never overwrite)", path));
  }
}

void check_exportable(const std::string& name, const bitlinear::BitLinearImpl& l, const LinearRequirements& req) {
  const auto& q = l.options.quant;
  auto fail = [&](const std::string& what) { throw core::UserError(fmt::format("{}: {} {}", req.format, name, what)); };
  if (!l.has_latent_weights()) fail("is already packed; export from a run directory");
  if (std::find(req.weight_types.begin(), req.weight_types.end(), q.weight.type) == req.weight_types.end()) {
    std::vector<std::string> names;
    for (auto t : req.weight_types) names.push_back(bitlinear::to_string(t));
    fail(
        fmt::format("has weights '{}': {} stores every block linear as {} (check quant.include / quant.exclude and "
                    "quant.weight.type)",
                    bitlinear::to_string(q.weight.type), req.holder, fmt::join(names, " or ")));
  }
  if (!req.learned_scales && q.weight.scale == bitlinear::ScaleSource::kLearned) {
    fail(fmt::format("has quant.weight.scale = learned: {}", req.learned_scale_reason));
  }
  if (std::find(req.granularities.begin(), req.granularities.end(), q.weight.granularity) == req.granularities.end()) {
    fail(fmt::format("has quant.weight.granularity = {}: {}", bitlinear::to_string(q.weight.granularity),
                     req.granularity_reason));
  }
  if (q.weight.granularity == bitlinear::Granularity::kPerGroup && q.weight.group_size % req.group_multiple != 0) {
    fail(fmt::format("has quant.weight.group_size = {}: {}", q.weight.group_size, req.group_reason));
  }
  if (req.per_token_8bit_activations && (q.act.type != bitlinear::ActQuant::kPerToken || q.act.bits != 8)) {
    fail(fmt::format("has activations {} with {} bits: expected quant.activation per_token with 8 bits",
                     bitlinear::to_string(q.act.type), q.act.bits));
  }
  if (l.options.in_features % req.in_multiple != 0) {
    fail(fmt::format("has {} input features: {}", l.options.in_features, req.in_reason));
  }
  if (l.options.out_features % req.out_multiple != 0) {
    fail(fmt::format("has {} output features: {}", l.options.out_features, req.out_reason));
  }
  if (l.bias.defined()) fail(fmt::format("has a bias: {} has none", req.holder));
  if (req.sub_norm && *req.sub_norm != static_cast<bool>(l.norm)) {
    fail(*req.sub_norm ? fmt::format("does not have the SubLN norm {} expects", req.holder)
                       : fmt::format("has a SubLN norm {} does not have", req.holder));
  }
}

}  // namespace bitqat::interop
