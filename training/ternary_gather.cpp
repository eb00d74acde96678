#include "training/ternary_gather.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "bitlinear/absmean.hpp"
#include "bitlinear/quantizers.hpp"

namespace bitqat::training {

FlatGroups flat_groups(int64_t numel, int64_t row_length, int64_t group, bool per_tensor) {
  FlatGroups g;
  if (numel <= 0 || row_length <= 0 || numel % row_length != 0) return g;
  if (per_tensor) {
    g.group = numel;
    g.run = row_length;
  } else if (group > 0 && row_length % group == 0) {
    g.group = g.run = group;
  } else if (group >= row_length) {
    g.group = g.run = row_length;  // one group per row
  } else {
    return g;
  }
  g.count = numel / g.group;
  g.runs = numel / g.run;
  g.per_tensor = per_tensor;
  g.ok = true;
  return g;
}

at::Tensor run_sums_of_chunk(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g) {
  auto out = at::zeros({g.runs}, chunk.options().dtype(at::kDouble));
  if (end <= begin) return out;
  const int64_t numel = g.runs * g.run;
  if (begin % g.run != 0 || (end % g.run != 0 && end != numel)) {
    throw std::invalid_argument("run_sums_of_chunk: elements [" + std::to_string(begin) + ", " + std::to_string(end) +
                                ") are not whole runs of " + std::to_string(g.run));
  }
  const auto w = chunk.narrow(0, 0, end - begin);
  const at::Tensor sums = w.device().is_cpu() && w.scalar_type() == at::kFloat
                              ? bitlinear::kernels::run_abs_sums(w.contiguous(), g.run)
                              : w.reshape({-1, g.run}).abs().to(at::kDouble).sum(1);
  out.narrow(0, begin / g.run, sums.numel()).copy_(sums);
  return out;
}

at::Tensor scales_of_runs(const at::Tensor& sums, const FlatGroups& g) {
  const auto s = sums.to(at::kCPU, at::kDouble).contiguous();
  const auto* ps = s.data_ptr<double>();
  if (g.per_tensor) return at::full({1}, bitlinear::kernels::absmean_of_rows(ps, g.runs, g.run), at::kFloat);
  auto gamma = at::empty({g.count}, at::kFloat);
  auto* pg = gamma.data_ptr<float>();
  for (int64_t i = 0; i < g.count; ++i) pg[i] = bitlinear::kernels::absmean_of_group(ps[i], g.group);
  return gamma;
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
    // ternary_code: clamp(round_half_away(w / (gamma + eps)), -1, 1), NaN -> 0, in float32.
    auto v = bitlinear::round_half_away(w / (gm + static_cast<float>(eps))).clamp_(-1.0f, 1.0f);
    codes.narrow(0, 0, end - begin).copy_(v.nan_to_num_(0.0f, 1.0f, -1.0f));
  }
  const auto u = codes.add_(1.0f).to(at::kByte).view({c / 4, 4});
  // At most 2 + 2 * 4 + 2 * 16 + 2 * 64 = 170: the sum is the bitwise or.
  return u.select(1, 0) + u.select(1, 1) * 4 + u.select(1, 2) * 16 + u.select(1, 3) * 64;
}

at::Tensor unpack_ternary(const at::Tensor& packed, int64_t numel, const FlatGroups& g, const at::Tensor& gamma) {
  const auto p = packed.reshape({-1, 1});
  const auto shifts = at::tensor({0, 2, 4, 6}, packed.options().dtype(at::kByte));
  const auto codes = at::bitwise_right_shift(p, shifts)
                         .bitwise_and_(3)
                         .reshape({-1})
                         .narrow(0, 0, numel)
                         .to(at::kFloat)
                         .sub_(1.0f)
                         .view({g.count, g.group});
  const auto dopt = codes.options().dtype(at::kDouble);
  const double n = static_cast<double>(g.group);
  const auto gf = gamma.to(codes.device(), at::kFloat).reshape({g.count});
  const auto gd = gf.to(at::kDouble);
  const auto nnz = codes.abs().sum(1, false, at::kDouble);
  const auto any = nnz.gt(0);
  const auto safe_nnz = nnz.clamp_min(1.0);
  // c = gamma * n / nnz rounded toward zero to float32, and the next float32 up.
  const auto x = gd * n / safe_nnz;
  auto cf = x.to(at::kFloat);
  cf = at::where(cf.to(at::kDouble).gt(x), at::nextafter(cf, at::zeros_like(cf)), cf);
  const auto cp = at::nextafter(cf, at::full_like(cf, std::numeric_limits<float>::infinity()));
  const auto cfd = cf.to(at::kDouble), cpd = cp.to(at::kDouble);
  const auto sum_with = [&](const at::Tensor& k) { return (safe_nnz - k) * cfd + k * cpd; };
  const auto scale_of = [&](const at::Tensor& s) { return (s / n).to(at::kFloat); };
  // The smallest k in [0, nnz] with float32(S(k) / n) >= gamma: S(k) grows with k, and S(0) / n <= gamma
  // (c rounded down), S(nnz) / n > gamma.
  auto lo = at::zeros({g.count}, dopt), hi = safe_nnz.clone();
  for (int64_t span = g.group; span > 0; span /= 2) {
    const auto mid = ((lo + hi) / 2).floor_();
    const auto ge = scale_of(sum_with(mid)).ge(gf);
    hi = at::where(ge, mid, hi);
    lo = at::where(ge, lo, mid + 1);
  }
  lo = at::minimum(lo, hi);
  const auto hit = scale_of(sum_with(lo)).eq(gf);
  // Where none lands on gamma: k - 1 and a magnitude z <= gamma / 4 on the group's first zero code,
  // with S(k - 1) + z exact (z >= S * 2^-28 keeps every partial sum within 53 bits of z's spacing).
  const auto km = (lo - 1).clamp_min_(0.0);
  const auto s0 = sum_with(km);
  const auto z0 = (gd * n - s0).to(at::kFloat).clamp_min_(0.0f);
  at::Tensor z = at::zeros_like(z0);
  at::Tensor found = at::zeros_like(any);
  for (const auto& cand : {z0, at::nextafter(z0, at::full_like(z0, std::numeric_limits<float>::infinity())),
                           at::nextafter(z0, at::zeros_like(z0))}) {
    const auto zd = cand.to(at::kDouble);
    const auto s = s0 + zd;
    const auto ok = scale_of(s).eq(gf) & (s - s0).eq(zd) & zd.ge(s0 * std::ldexp(1.0, -28)) &
                    cand.le(gf / 4.0f) & found.logical_not();
    z = at::where(ok, cand, z);
    found = found | ok;
  }
  const auto zero = codes.eq(0.0f);
  const auto first_zero = zero & zero.to(at::kInt).cumsum(1).eq(1);
  const auto use_z = any & hit.logical_not() & found & first_zero.any(1);
  const auto k = at::where(use_z, km, lo).unsqueeze(1);
  const auto rank = codes.abs().cumsum(1, at::kDouble);  // 1-based rank of a non-zero code in its group
  const auto mag = at::where(rank.le(k), cp.unsqueeze(1), cf.unsqueeze(1));
  auto w = codes * mag;
  w = w + first_zero.to(at::kFloat) * at::where(use_z, z, at::zeros_like(z)).unsqueeze(1);
  return at::where(any.unsqueeze(1), w, at::zeros_like(w)).reshape({numel});
}

}  // namespace bitqat::training
