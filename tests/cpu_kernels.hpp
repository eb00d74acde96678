// Test helpers of the per-instruction-set CPU kernels (tests/bitlinear/cpu/row_kernels_test.cpp,
// tests/models/cpu/lm_kernels_test.cpp): the variants this CPU runs, reproducible normal floats, and
// bit equality.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/cpu_isa.hpp"

namespace bitqat::testing {

// Every variant of a kernel table that this CPU runs, baseline first (for_isa: row_kernels_for, ...).
template <class Table>
std::vector<const Table*> cpu_variants(const Table* (*for_isa)(core::CpuIsa)) {
  std::vector<const Table*> out;
  for (const auto isa : core::kCpuIsas) {
    if (const auto* k = for_isa(isa)) out.push_back(k);
  }
  return out;
}

// n floats from N(0, scale^2), the same for a seed on every machine (std::mt19937 and the
// libstdc++ normal distribution).
inline std::vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// a and b hold the same bits, or are both NaN, at each of n places.
inline bool same_bits(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
  }
  return true;
}

}  // namespace bitqat::testing
