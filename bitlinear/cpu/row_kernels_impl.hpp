// The body of the CPU row kernels (row_kernels.hpp), included by one .cpp per instruction set with
// BITQAT_ROWK_NS naming its namespace. Plain loops written for the compiler's vectorizer: lane
// arrays for the canonical sums (each lane an independent left-to-right sum, so the vector code
// equals the scalar definition), GCC vector types where GCC would not vectorize a lane array (the
// absmax; a GCC extension, and GCC builds this project), branch-free codes and an exact round-half-away through
// integer truncation. Nothing here has external linkage beyond the kernel table, and no standard-library
// template is instantiated (std::min, std::fill, std::vector): an AVX-512 copy of a shared inline
// function or template could otherwise be picked by the linker for baseline callers. The arithmetic is the
// one of cuda/quant_codes.hpp, restated here for that reason; tests compare every variant with it.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "bitlinear/cpu/relu_bits.hpp"
#include "bitlinear/cpu/row_kernels.hpp"

namespace bitqat::bitlinear::cpu::BITQAT_ROWK_NS {
namespace {

constexpr int kLanes = 256;  // cuda/quant_codes.hpp kReduceLanes
constexpr int kMaxLanes = 16;

int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n && p < kLanes) p *= 2;
  return p;
}

// The canonical sum (cuda/quant_codes.hpp): lane l sums terms l, l + 256, ... left to right, then the
// halving tree. Lanes past the last term hold 0, and adding 0 changes nothing, so the tree may start
// at the smallest power of two covering min(n, 256) lanes.
template <class Term>
double canonical_sum(int64_t n, Term term) {
  alignas(64) double lane[kLanes];
  const int64_t p = pow2_at_least(n);
  // The first block is written rather than added to zeroed lanes: 0.0 + t keeps that addition's value
  // (-0 becomes +0) without a separate pass clearing the lanes.
  const int64_t first = n < kLanes ? n : kLanes;
  for (int64_t l = 0; l < first; ++l) lane[l] = 0.0 + term(l);
  for (int64_t l = first; l < p; ++l) lane[l] = 0.0;
  int64_t i = first;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] += term(i + l);
  }
  for (int64_t l = 0; i + l < n; ++l) lane[l] += term(i + l);
  for (int64_t o = p / 2; o > 0; o /= 2) {
    for (int64_t l = 0; l < o; ++l) lane[l] += lane[l + o];
  }
  return lane[0];
}

// Exact round half away from zero for |v| < 2^22: t = trunc(v) and v - t are exact.
inline float round_half_away(float v) {
  const float t = static_cast<float>(static_cast<int32_t>(v));
  const float f = v - t;
  return t + (f >= 0.5f ? 1.0f : 0.0f) - (f <= -0.5f ? 1.0f : 0.0f);
}

// max |x| over a row (exact in any order) and whether every value was finite. Written with GCC
// vector types (16 float lanes: one AVX-512 register, two AVX2 or four SSE ones), because GCC
// unrolls a 16-lane array loop into scalar code here. z sums x * 0, which is +-0 for a finite x and
// NaN for an infinite or NaN one, so z is NaN exactly when a value was not finite; a NaN never wins
// `a > m`, as in the scalar definition (whose scale is NaN for such a row whatever amax is).
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

float row_absmax(const float* x, int64_t k, bool* finite) {
  f32x16 m = {}, z = {};
  int64_t i = 0;
  for (; i + kMaxLanes <= k; i += kMaxLanes) {
    f32x16 v;
    std::memcpy(&v, x + i, sizeof v);
    i32x16 bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0x7fffffff;
    f32x16 a;
    std::memcpy(&a, &bits, sizeof a);
    m = a > m ? a : m;
    z += v * 0.0f;
  }
  float amax = 0.0f, zs = 0.0f;
  for (int l = 0; l < kMaxLanes; ++l) {
    amax = m[l] > amax ? m[l] : amax;
    zs += z[l];
  }
  for (; i < k; ++i) {
    const float a = std::fabs(x[i]);
    amax = a > amax ? a : amax;
    zs += x[i] * 0.0f;
  }
  *finite = zs == zs;
  return amax;
}

// s = qmax / max(amax, eps), NaN for a non-finite row (cuda/quant_codes.hpp act_scale).
float act_scale(float amax, float eps, int qmax, bool finite) {
  if (!finite) return std::numeric_limits<float>::quiet_NaN();
  return static_cast<float>(qmax) / (amax > eps ? amax : eps);
}

float rms_inverse(const float* x, int64_t k, double eps) {
  const double ss = canonical_sum(k, [&](int64_t j) { return static_cast<double>(x[j]) * static_cast<double>(x[j]); });
  return static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(k) + eps));
}

void rms_norm(const float* x, int64_t k, const float* w, double eps, float* y, float* r, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const float* xr = x + row * k;
    float* yr = y + row * k;
    const float ri = rms_inverse(xr, k, eps);
    if (w) {
      for (int64_t j = 0; j < k; ++j) yr[j] = (xr[j] * ri) * w[j];
    } else {
      for (int64_t j = 0; j < k; ++j) yr[j] = xr[j] * ri;
    }
    if (r) r[row] = ri;
  }
}

// A sum in kMaxLanes interleaved double lanes (lane l takes terms l, l + kMaxLanes, ...), then the
// lanes in order: a fixed order, so every variant computes the same value, and one the vectorizer
// keeps in registers (a single running sum is one dependent add per element).
template <class Term>
double lane_sum(int64_t n, Term term) {
  double lane[kMaxLanes] = {};
  int64_t i = 0;
  for (; i + kMaxLanes <= n; i += kMaxLanes) {
    for (int l = 0; l < kMaxLanes; ++l) lane[l] += term(i + l);
  }
  for (int l = 0; i + l < n; ++l) lane[l] += term(i + l);
  double c = 0.0;
  for (int l = 0; l < kMaxLanes; ++l) c += lane[l];
  return c;
}

// c = sum over the row of (g w)(x r), each product exact in double, as a lane_sum (gradients need no
// canonical (CUDA) order). The weight test stays outside the loop, so each loop vectorizes.
double grad_dot_xhat(const float* gr, const float* w, const float* xr, float ri, int64_t k) {
  if (w) {
    return lane_sum(k, [&](int64_t j) { return static_cast<double>(gr[j] * w[j]) * static_cast<double>(xr[j] * ri); });
  }
  return lane_sum(k, [&](int64_t j) { return static_cast<double>(gr[j]) * static_cast<double>(xr[j] * ri); });
}

// a = relu(u)^2 over a row, and relu(u) itself in rel (the backward's chain rule needs both).
void relu_squared_row(const float* u, int64_t k, float* a, float* rel) {
  for (int64_t j = 0; j < k; ++j) {
    rel[j] = relu_bits(u[j]);
    a[j] = rel[j] * rel[j];
  }
}

void rms_norm_backward(const float* g, const float* x, const float* w, const float* r, int64_t k, bool relu2, float* dx,
                       float* dw_partial, int64_t begin, int64_t end) {
  // With relu2, x holds u and the norm's input is a = relu(u)^2, rebuilt per row in `a`.
  float* a = relu2 ? static_cast<float*>(std::malloc(static_cast<size_t>(2 * k) * sizeof(float))) : nullptr;
  float* rel = relu2 ? a + k : nullptr;
  for (int64_t row = begin; row < end; ++row) {
    const float* gr = g + row * k;
    const float* xr = x + row * k;
    float* dxr = dx + row * k;
    if (relu2) {
      relu_squared_row(xr, k, a, rel);
      xr = a;
    }
    const float ri = r[row];
    // c = mean over the row of (g w)(x r), in double for accuracy.
    const float cf = static_cast<float>(grad_dot_xhat(gr, w, xr, ri, k) / static_cast<double>(k));
    // dw before dx: dx may be g's own buffer.
    if (dw_partial) {
      for (int64_t j = 0; j < k; ++j) dw_partial[j] += gr[j] * (xr[j] * ri);
    }
    if (w) {
      for (int64_t j = 0; j < k; ++j) dxr[j] = ri * (gr[j] * w[j] - (xr[j] * ri) * cf);
    } else {
      for (int64_t j = 0; j < k; ++j) dxr[j] = ri * (gr[j] - (xr[j] * ri) * cf);
    }
    // The chain through relu(u)^2: d/du = g (relu(u) + relu(u)), as the unfused backward computes it.
    if (relu2) {
      for (int64_t j = 0; j < k; ++j) dxr[j] = dxr[j] * (rel[j] + rel[j]);
    }
  }
  std::free(a);
}

void act_codes_row(const float* h, int64_t k, int64_t ldq, float s, int qmax, int8_t* q, float* qf) {
  const float hi = static_cast<float>(qmax), lo = static_cast<float>(-qmax - 1);
  if (!(s == s)) {  // a non-finite row: codes 0
    if (q) std::memset(q, 0, static_cast<size_t>(ldq));
    if (qf) {
      for (int64_t j = 0; j < ldq; ++j) qf[j] = 0.0f;
    }
    return;
  }
  for (int64_t j = 0; j < k; ++j) {
    const float v = round_half_away(h[j] * s);
    const float c = v > hi ? hi : (v < lo ? lo : v);
    if (q) q[j] = static_cast<int8_t>(c);
    if (qf) qf[j] = c;
  }
  for (int64_t j = k; j < ldq; ++j) {
    if (q) q[j] = 0;
    if (qf) qf[j] = 0.0f;
  }
}

void act_quant_rows(const float* x, int64_t k, int64_t ldq, float eps, int qmax, bool relu2, const float* norm_w,
                    double norm_eps, int8_t* q, float* qf, float* s, float* r, int64_t begin, int64_t end) {
  float* h = (norm_w || relu2) ? static_cast<float*>(std::malloc(static_cast<size_t>(k) * sizeof(float))) : nullptr;
  for (int64_t row = begin; row < end; ++row) {
    const float* xr = x + row * k;
    if (relu2) {
      for (int64_t j = 0; j < k; ++j) {
        const float v = relu_bits(xr[j]);
        h[j] = v * v;
      }
      xr = h;
    }
    if (norm_w) {
      // In place when xr is h: each y[j] reads only x[j], after r is known.
      rms_norm(xr, k, norm_w, norm_eps, h, r ? r + row : nullptr, 0, 1);
      xr = h;
    }
    bool finite = true;
    const float amax = row_absmax(xr, k, &finite);
    const float si = act_scale(amax, eps, qmax, finite);
    act_codes_row(xr, k, ldq, si, qmax, q ? q + row * ldq : nullptr, qf ? qf + row * ldq : nullptr);
    s[row] = si;
  }
  std::free(h);
}

void act_fake_quant_rows(const float* x, int64_t k, float eps, int qmax, float lambda, float* out, float* s,
                         int64_t begin, int64_t end) {
  const float hi = static_cast<float>(qmax), lo = static_cast<float>(-qmax - 1);
  for (int64_t row = begin; row < end; ++row) {
    const float* xr = x + row * k;
    float* o = out + row * k;
    // Two statements: row_absmax sets `finite`, which act_scale must read afterwards (the arguments of
    // one call are evaluated in no fixed order).
    bool finite = true;
    const float amax = row_absmax(xr, k, &finite);
    const float si = act_scale(amax, eps, qmax, finite);
    s[row] = si;
    if (!(si == si)) {  // codes 0, scale NaN: code / s is NaN, and so is every blend with it
      for (int64_t j = 0; j < k; ++j) o[j] = lambda == 0.0f ? xr[j] : std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    for (int64_t j = 0; j < k; ++j) {
      const float v = round_half_away(xr[j] * si);
      const float d = (v > hi ? hi : (v < lo ? lo : v)) / si;
      o[j] = lambda == 1.0f ? d : (lambda == 0.0f ? xr[j] : xr[j] + lambda * (d - xr[j]));
    }
  }
}

void act_ste_backward(const float* g, const float* x, const float* s, int64_t k, int qmax, float clip, float lambda,
                      float* dx, int64_t begin, int64_t end) {
  const float keep = 1.0f - lambda;
  const float q = static_cast<float>(qmax);
  for (int64_t row = begin; row < end; ++row) {
    const float* gr = g + row * k;
    const float* xr = x + row * k;
    float* d = dx + row * k;
    const float si = s[row];
    if (clip < 0.0f) {
      std::memcpy(d, gr, static_cast<size_t>(k) * sizeof(float));
      continue;
    }
    for (int64_t j = 0; j < k; ++j) {
      const float inside = (std::fabs(xr[j]) * si / q <= clip) ? 1.0f : 0.0f;
      d[j] = gr[j] * (keep + lambda * inside);
    }
  }
}

void abs_sums(const float* w, int64_t cols, int64_t group, double* out, int64_t begin, int64_t end) {
  const int64_t groups = (cols + group - 1) / group;
  for (int64_t row = begin; row < end; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* p = w + row * cols + g * group;
      const int64_t n = cols - g * group < group ? cols - g * group : group;
      out[row * groups + g] = canonical_sum(n, [&](int64_t j) { return static_cast<double>(std::fabs(p[j])); });
    }
  }
}

// The ternary code clamp(round_half_away(v), -1, 1) of v = w / (gamma + eps), NaN -> 0
// (cuda/quant_codes.hpp ternary_code), as a float: round_half_away(v) >= 1 exactly when v >= 0.5
// and <= -1 exactly when v <= -0.5, and a NaN fails both compares. No branch, so it vectorizes.
inline float ternary_code_f(float v) { return static_cast<float>(v >= 0.5f) - static_cast<float>(v <= -0.5f); }

void ternary_rows(const float* w, int64_t cols, int64_t group, int64_t stride, const float* gamma, float eps,
                  int8_t* codes, float* codes_f, float lambda, float* out, int64_t begin, int64_t end) {
  constexpr int64_t kChunk = 256;
  alignas(64) float c[kChunk];
  for (int64_t row = begin; row < end; ++row) {
    const float* wr = w + row * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += group) {
      const int64_t n = cols - c0 < group ? cols - c0 : group;
      const float gm = gamma[row * stride + (stride > 0 ? c0 / group : 0)];
      const float denom = gm + eps;
      // Chunks of the group: the codes first, then each requested output in its own plain loop.
      for (int64_t j0 = c0; j0 < c0 + n; j0 += kChunk) {
        const int64_t len = c0 + n - j0 < kChunk ? c0 + n - j0 : kChunk;
        const float* wj = wr + j0;
        for (int64_t j = 0; j < len; ++j) c[j] = ternary_code_f(wj[j] / denom);
        if (codes) {
          int8_t* q = codes + row * cols + j0;
          for (int64_t j = 0; j < len; ++j) q[j] = static_cast<int8_t>(c[j]);
        }
        if (codes_f) std::memcpy(codes_f + row * cols + j0, c, static_cast<size_t>(len) * sizeof(float));
        if (out) {
          float* o = out + row * cols + j0;
          if (lambda == 1.0f) {
            for (int64_t j = 0; j < len; ++j) o[j] = c[j] * gm;
          } else if (lambda == 0.0f) {
            std::memcpy(o, wj, static_cast<size_t>(len) * sizeof(float));
          } else {
            for (int64_t j = 0; j < len; ++j) o[j] = wj[j] + lambda * (c[j] * gm - wj[j]);
          }
        }
      }
    }
  }
}

void linear_epilogue(const int32_t* const* acc, int64_t groups, int64_t n, const float* gamma, int64_t gstride,
                     const float* s, const float* bias, float* y, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    float* yr = y + row * n;
    if (groups == 1 && gstride == 1) {
      // One pass, the same operations per element: ((0 + acc * gamma) / s) + bias. y may be acc's
      // own memory (each sum is read, through memcpy, before its output is stored).
      const int32_t* a = acc[0] + row * n;
      const float si = s[row];
      if (bias) {
        for (int64_t c = 0; c < n; ++c) {
          int32_t ai;
          std::memcpy(&ai, a + c, sizeof ai);
          yr[c] = (0.0f + static_cast<float>(ai) * gamma[c]) / si + bias[c];
        }
      } else {
        for (int64_t c = 0; c < n; ++c) {
          int32_t ai;
          std::memcpy(&ai, a + c, sizeof ai);
          yr[c] = (0.0f + static_cast<float>(ai) * gamma[c]) / si;
        }
      }
      continue;
    }
    for (int64_t c = 0; c < n; ++c) yr[c] = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      const int32_t* a = acc[g] + row * n;
      for (int64_t c = 0; c < n; ++c) yr[c] = yr[c] + static_cast<float>(a[c]) * gamma[c * gstride + g];
    }
    const float si = s[row];
    for (int64_t c = 0; c < n; ++c) yr[c] = yr[c] / si;
    if (bias) {
      for (int64_t c = 0; c < n; ++c) yr[c] = yr[c] + bias[c];
    }
  }
}

void dequant_rows(const int8_t* codes, int64_t k, const float* s, float* out, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const float si = s[row];
    const int8_t* q = codes + row * k;
    float* o = out + row * k;
    for (int64_t j = 0; j < k; ++j) o[j] = static_cast<float>(q[j]) / si;
  }
}

void scale_codes(const int8_t* codes, int64_t cols, int64_t group, int64_t stride, const float* gamma, float* out,
                 int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    for (int64_t c0 = 0; c0 < cols; c0 += group) {
      const int64_t n = cols - c0 < group ? cols - c0 : group;
      const float gm = gamma[row * stride + (stride > 0 ? c0 / group : 0)];
      const int8_t* q = codes + row * cols + c0;
      float* o = out + row * cols + c0;
      for (int64_t j = 0; j < n; ++j) o[j] = static_cast<float>(q[j]) * gm;
    }
  }
}

}  // namespace

extern const RowKernels kKernels;
const RowKernels kKernels = {BITQAT_ROWK_NAME,    rms_norm,         rms_norm_backward, act_quant_rows,
                             act_fake_quant_rows, act_ste_backward, abs_sums,          ternary_rows,
                             linear_epilogue,     dequant_rows,     scale_codes};

}  // namespace bitqat::bitlinear::cpu::BITQAT_ROWK_NS
