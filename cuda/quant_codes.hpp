// The one definition of every quantization code bitqat computes: int8 per-token / per-tensor
// activation codes, ternary absmean and binary sign weight codes, and the RMSNorm whose output feeds
// activation quantization (SubLN). Host C++ and nvcc; no LibTorch.
//
// Every path that produces codes uses these functions: the fake-quant forward and its straight-through
// estimators (bitlinear/quantizers.cpp), PackedBitLinear and the W1.58A8 ops, the CUDA kernels
// (cuda/quant.cu) and their scalar references (cuda/reference.cpp), `bitqat quantize` and every export.
//
// Why it is written this way: a code is round(v) of a float v, and a tie (v = k + 0.5) decided by the
// last bit of v flips the code. LibTorch picks CPU kernels by instruction set (default / AVX2 /
// AVX-512) and sums in an order that depends on the vector width, so a mean or a norm computed with
// ATen reductions differs in the last bit from one CPU to the next. Here:
//   - element operations are single IEEE-754 operations (x * s, w / (gamma + eps), code / s), which
//     are correctly rounded on every CPU and GPU (no contraction into FMA: CMake builds these with
//     -ffp-contract=off and nvcc with --fmad=false);
//   - maxima (absmax) are exact in any order;
//   - sums (absmean, mean, sum of squares) are taken in double in one fixed order, the canonical
//     order below, which the CPU loops and the GPU kernels both follow.
// The same input therefore gives the same codes on every CPU, instruction set and GPU.
//
// Canonical sum of n terms t[0..n): kReduceLanes partial sums, lane l holding
//   t[l] + t[l + L] + t[l + 2L] + ...   (added left to right, L = kReduceLanes),
// then a halving tree: for o = L/2, L/4, ..., 1: lane[l] += lane[l + o] for l < o; the result is
// lane[0]. On the GPU this is one thread per lane, a shared-memory step per o >= 32 and warp shuffles
// (__shfl_down_sync) below.
#pragma once
#include <cmath>
#include <cstdint>

#include "cuda/ternary_format.hpp"

namespace bitqat::cuda {

constexpr int kReduceLanes = 256;
static_assert((kReduceLanes & (kReduceLanes - 1)) == 0, "the reduction tree halves a power of two");

// ---- element operations -------------------------------------------------------------------------

// Round half away from zero, correctly (0.5 -> 1, -0.5 -> -1, 2.5 -> 3, 0.49999997f -> 0).
BITQAT_HD float round_half_away(float v) {
#if defined(__CUDA_ARCH__)
  return roundf(v);
#else
  return std::round(v);
#endif
}
BITQAT_HD double round_half_away(double v) {
#if defined(__CUDA_ARCH__)
  return ::round(v);
#else
  return std::round(v);
#endif
}

template <class T>
BITQAT_HD bool is_finite(T v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Largest code magnitude of a `bits`-bit activation code (2..8): 2^(bits-1) - 1.
BITQAT_HD int act_qmax(int bits) { return (1 << (bits - 1)) - 1; }

// Activation scale s = qmax / max(amax, eps) (x ~= code / s). `finite` is false when the row held a
// NaN or an infinity: its scale is NaN, its codes 0, so every value computed from it is NaN and the
// trainer's non-finite-step guard sees it on every device.
template <class T>
BITQAT_HD T act_scale(T amax, T eps, int qmax, bool finite) {
  if (!finite) return T(NAN);
  return static_cast<T>(qmax) / (amax > eps ? amax : eps);
}

// code = clamp(round_half_away(x * s), -qmax - 1, qmax); 0 for a non-finite scale.
template <class T>
BITQAT_HD int8_t act_code(T x, T s, int qmax) {
  if (!is_finite(s)) return 0;
  const T v = round_half_away(x * s);
  const T hi = static_cast<T>(qmax), lo = static_cast<T>(-qmax - 1);
  return static_cast<int8_t>(v > hi ? hi : (v < lo ? lo : v));
}

// Ternary absmean code: clamp(round_half_away(w / (gamma + eps)), -1, 1) (BitNet b1.58, eq. 1-3).
template <class T>
BITQAT_HD int8_t ternary_code(T w, T gamma, T eps) {
  const T v = round_half_away(w / (gamma + eps));
  return static_cast<int8_t>(v > T(1) ? 1 : (v < T(-1) ? -1 : (v == v ? v : 0)));
}

// Binary sign code (BitNet b1): +1 where w - mean(w) >= 0, else -1 (sign(0) = +1).
template <class T>
BITQAT_HD int8_t binary_code(T w, T mu) {
  return (w - mu >= T(0)) ? int8_t{1} : int8_t{-1};
}

// RMSNorm's inverse root mean square from the canonical sum of squares: 1 / sqrt(ss / k + eps),
// in double, rounded once to T.
template <class T>
BITQAT_HD T rms_inverse(double sum_sq, int64_t k, double eps) {
#if defined(__CUDA_ARCH__)
  return static_cast<T>(1.0 / ::sqrt(sum_sq / static_cast<double>(k) + eps));
#else
  return static_cast<T>(1.0 / std::sqrt(sum_sq / static_cast<double>(k) + eps));
#endif
}

// y = (x * r) * w: the normalized value, two correctly rounded products in this order.
template <class T>
BITQAT_HD T rms_apply(T x, T r, T w) {
  return (x * r) * w;
}

#if !defined(__CUDACC__) || !defined(__CUDA_ARCH__)
// ---- host loops in the canonical order --------------------------------------------------------

// The halving tree over kReduceLanes partial sums (lanes past the last term hold 0).
inline double reduce_lanes(double* lane) {
  for (int o = kReduceLanes / 2; o > 0; o /= 2) {
    for (int l = 0; l < o; ++l) lane[l] += lane[l + o];
  }
  return lane[0];
}

// Canonical sum of term(i) for i in [0, n); term returns a double.
template <class F>
double canonical_sum(int64_t n, F term) {
  double lane[kReduceLanes] = {};
  int64_t i = 0;
  for (; i + kReduceLanes <= n; i += kReduceLanes) {
    for (int l = 0; l < kReduceLanes; ++l) lane[l] += term(i + l);
  }
  for (int l = 0; i + l < n; ++l) lane[l] += term(i + l);
  return reduce_lanes(lane);
}

// One row x[0..k) of RMSNorm: out[j] = (x[j] * r) * w[j] (w may be null: weight 1). Returns r.
template <class T>
T rms_norm_row(const T* x, int64_t k, const T* w, double eps, T* out) {
  const double ss = canonical_sum(k, [&](int64_t j) { return static_cast<double>(x[j]) * static_cast<double>(x[j]); });
  const T r = rms_inverse<T>(ss, k, eps);
  for (int64_t j = 0; j < k; ++j) out[j] = w ? rms_apply(x[j], r, w[j]) : x[j] * r;
  return r;
}

// One row x[0..k) of absmax activation quantization: writes q[0..kp) (zeros past k) and returns the
// scale s (NaN for a row holding NaN or infinity).
template <class T>
T act_quant_row(const T* x, int64_t k, int64_t kp, T eps, int qmax, int8_t* q) {
  T amax = 0;
  bool finite = true;
  for (int64_t j = 0; j < k; ++j) {
    const T a = x[j] < T(0) ? -x[j] : x[j];
    finite = finite && is_finite(a);
    amax = a > amax ? a : amax;
  }
  const T s = act_scale(amax, eps, qmax, finite);
  for (int64_t j = 0; j < k; ++j) q[j] = act_code(x[j], s, qmax);
  for (int64_t j = k; j < kp; ++j) q[j] = 0;
  return s;
}

// Absmax over a whole tensor (per-tensor activation scale): exact in any order. Returns whether every
// value was finite.
template <class T>
bool absmax(const T* x, int64_t n, T* amax_out) {
  T amax = 0;
  bool finite = true;
  for (int64_t j = 0; j < n; ++j) {
    const T a = x[j] < T(0) ? -x[j] : x[j];
    finite = finite && is_finite(a);
    amax = a > amax ? a : amax;
  }
  *amax_out = amax;
  return finite;
}

// Canonical sums over n weights of |w| (absmean numerator) and of w (binary's mean): one scale group.
template <class T>
double abs_sum(const T* w, int64_t n) {
  return canonical_sum(n, [&](int64_t j) { return static_cast<double>(w[j] < T(0) ? -w[j] : w[j]); });
}
template <class T>
double plain_sum(const T* w, int64_t n) {
  return canonical_sum(n, [&](int64_t j) { return static_cast<double>(w[j]); });
}
#endif

}  // namespace bitqat::cuda
