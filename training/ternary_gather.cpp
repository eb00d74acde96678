#include "training/ternary_gather.hpp"

#include <stdexcept>

namespace bitqat::training {

FlatGroups flat_groups(int64_t numel, int64_t row_length, int64_t group, bool per_tensor) {
  FlatGroups g;
  if (numel <= 0) return g;
  if (per_tensor) {
    g.group = numel;
  } else if (row_length > 0 && group > 0 && row_length % group == 0) {
    g.group = group;
  } else if (row_length > 0 && group >= row_length) {
    g.group = row_length;  // one group per row
  } else {
    return g;
  }
  if (numel % g.group != 0) return g;
  g.count = numel / g.group;
  g.ok = true;
  return g;
}

at::Tensor partial_abs_sums(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g) {
  auto out = at::zeros({g.count}, chunk.options().dtype(at::kDouble));
  if (end <= begin) return out;
  const auto a = chunk.narrow(0, 0, end - begin).abs().to(at::kDouble);
  // A partial group at the front, whole groups, a partial group at the back.
  int64_t i = begin;
  const int64_t head_end = std::min(end, (begin + g.group - 1) / g.group * g.group);
  if (head_end > i) {
    out[i / g.group] += a.narrow(0, 0, head_end - i).sum();
    i = head_end;
  }
  const int64_t whole = (end - i) / g.group;
  if (whole > 0) {
    out.narrow(0, i / g.group, whole).add_(a.narrow(0, i - begin, whole * g.group).view({whole, g.group}).sum(1));
    i += whole * g.group;
  }
  if (end > i) out[i / g.group] += a.narrow(0, i - begin, end - i).sum();
  return out;
}

at::Tensor gamma_of_elements(const at::Tensor& gamma, int64_t begin, int64_t end, const FlatGroups& g) {
  const auto idx = at::arange(begin, end, gamma.options().dtype(at::kLong)).div_(g.group, "floor");
  return gamma.to(at::kFloat).index_select(0, idx);
}

at::Tensor pack_ternary_chunk(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g,
                              const at::Tensor& gamma, double eps) {
  const int64_t c = chunk.numel();
  if (c % 4 != 0) throw std::invalid_argument("pack_ternary_chunk: a chunk is a multiple of 4 elements");
  auto codes = at::zeros({c}, chunk.options().dtype(at::kFloat));
  if (end > begin) {
    const auto w = chunk.narrow(0, 0, end - begin).to(at::kFloat);
    const auto gm = gamma_of_elements(gamma, begin, end, g);
    // round_half_away(w / (gamma + eps)) clamped to [-1, 1] (cuda/quant_codes.hpp's ternary_code).
    const auto r = w / (gm + static_cast<float>(eps));
    codes.narrow(0, 0, end - begin).copy_((r.abs() + 0.5f).floor_().mul_(r.sign()).clamp_(-1.0f, 1.0f));
  }
  const auto u = codes.add_(1.0f).to(at::kByte).view({c / 4, 4});
  // At most 2 + 2 * 4 + 2 * 16 + 2 * 64 = 170: the sum is the bitwise or.
  return u.select(1, 0) + u.select(1, 1) * 4 + u.select(1, 2) * 16 + u.select(1, 3) * 64;
}

at::Tensor unpack_ternary(const at::Tensor& packed, int64_t numel, const FlatGroups& g, const at::Tensor& gamma) {
  const auto p = packed.reshape({-1, 1});
  const auto shifts = at::tensor({0, 2, 4, 6}, packed.options().dtype(at::kByte));
  const auto codes = at::bitwise_right_shift(p, shifts).bitwise_and_(3).reshape({-1}).narrow(0, 0, numel).to(at::kFloat).sub_(1.0f);
  const auto grouped = codes.view({g.count, g.group});
  // m = non-zero codes / n; W' = code * gamma / m (0 for a group without a non-zero code).
  const auto nnz = grouped.abs().sum(1, false, at::kDouble);
  const auto v = at::where(nnz > 0, gamma.to(at::kDouble) * static_cast<double>(g.group) / nnz, at::zeros_like(nnz))
                     .to(at::kFloat);
  return (grouped * v.unsqueeze(1)).reshape({numel});
}

}  // namespace bitqat::training
