// The body of the CPU attention kernels (attention_kernels.hpp), included by one .cpp per instruction
// set with BITQAT_ATTN_NS naming its namespace, BITQAT_ATTN_VWIDTH the floats of one vector register
// (16 for AVX-512, 8 for AVX2, 4 for SSE) and BITQAT_ATTN_VREGS their number (32, 16, 16). Written
// with GCC vector types of that width (a GCC extension, and GCC builds this project): GCC lowers a
// wider vector type through the stack, which made an AVX2 build of 16-float vectors 3 to 5 times
// slower than ATen (measured with bench/attention_bench on 2026-12-01). As in
// bitlinear/cpu/row_kernels_impl.hpp, nothing here has external linkage beyond the kernel table and
// no standard-library inline function or template is used, so that no AVX-512 copy of a shared
// function can be picked by the linker for baseline callers.
//
// Layout inside the work buffer of one call (Tp = T rounded up to 16):
//   kt, vt  [d][Tp]  k and v transposed, zero past T (the score tiles read 16 columns at a time);
//   s, dp   [T][Tp]  scores / probabilities and the probability gradient. A score tile covers rows
//                    [i0, i0 + R) (R <= 8) and the 16-column blocks up to row i0 + R - 1, so row i has at least
//                    columns [0, round16(i + 1)). Softmax (and dS) then leave row i holding its values
//                    for j <= i and exact zeros for j in (i, min(Tp, round16(i + 17))): a product tile
//                    of R <= 8 rows starting at i0 <= i reads row i only at columns below i0 + R <= i + 8.
//   rs      [T]      1 / l per row (forward).
#include <math.h>

#include <cstdint>
#include <cstring>

#include "models/cpu/attention_kernels.hpp"

namespace bitqat::models::cpu::BITQAT_ATTN_NS {
namespace {

constexpr int64_t kV = BITQAT_ATTN_VWIDTH;  // floats per vector
constexpr int64_t kBlk = 16;                // columns of a score block; Tp and d are multiples of it
static_assert(kV == 4 || kV == 8 || kV == 16, "vector width");
typedef float fvec __attribute__((vector_size(kV * 4)));
typedef int32_t ivec __attribute__((vector_size(kV * 4)));
typedef uint32_t uvec __attribute__((vector_size(kV * 4)));
// Tile heights from the register file, R rows x NB vectors needing R * NB accumulators, NB loaded
// vectors and a broadcast. Scores: one 16-column block (NB = 16 / kV), R = 8 with AVX-512, else as
// many rows as fit (AVX2 6, SSE 2). Products (output rows of d floats): AVX-512 all d / 16 vectors
// of a row and R = min(8, 16 / NV); otherwise 2 vectors at a time (the row tile is read again for
// each pair) and R = 6. The sums run in the same order whatever R, except the transposed products'
// diagonal block, so the variants differ only in rounding.
constexpr int kVregs = BITQAT_ATTN_VREGS;
constexpr int kScoreVecs = kBlk / kV;
constexpr int kScoreRows = kVregs >= 32 ? 8 : (kVregs - 1 - kScoreVecs) / kScoreVecs;
static_assert(kScoreRows >= 1 && kScoreRows <= 8, "score tiles of 1 to 8 rows (exp_row's zeroing assumes <= 8)");

inline fvec load(const float* p) {
  fvec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, fvec v) { std::memcpy(p, &v, sizeof v); }
// x - (+0) is x for every x, so the compiler emits a plain broadcast (x + 0 would turn -0 into +0).
inline fvec bcast(float x) { return x - fvec{}; }

inline int64_t round16(int64_t n) { return (n + kBlk - 1) / kBlk * kBlk; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Fixed-order halving reductions of one vector: the halves add (or max) down to 4 lanes, then
// (l0 + l2) + (l1 + l3); the same order in every variant. Written with half-width vector types
// rather than a lane loop, which GCC compiled to scalar code through the stack.
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
template <bool kMax>
inline f32x4 fold4(fvec v) {
  f32x4 c, d;
  if constexpr (kV == 16) {
    f32x8 a, b;
    std::memcpy(&a, &v, sizeof a);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
    const f32x8 s8 = kMax ? (a > b ? a : b) : a + b;
    std::memcpy(&c, &s8, sizeof c);
    std::memcpy(&d, reinterpret_cast<const char*>(&s8) + sizeof c, sizeof d);
  } else if constexpr (kV == 8) {
    std::memcpy(&c, &v, sizeof c);
    std::memcpy(&d, reinterpret_cast<const char*>(&v) + sizeof c, sizeof d);
  } else {
    std::memcpy(&c, &v, sizeof c);
    return c;
  }
  return kMax ? (c > d ? c : d) : c + d;
}
inline float hsum(fvec v) {
  const f32x4 s4 = fold4<false>(v);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
inline float hmax(fvec v) {
  const f32x4 s4 = fold4<true>(v);
  const float x = s4[0] > s4[2] ? s4[0] : s4[2], y = s4[1] > s4[3] ? s4[1] : s4[3];
  return x > y ? x : y;
}

// exp(x) for x <= ~0 (softmax arguments): Cody-Waite reduction x = n ln2 + r with ln2 in two parts,
// and Cephes' expf polynomial for e^r on |r| <= ln2 / 2 (relative error about 2 ulp); 2^n built in
// the exponent bits. Arguments below -87 give exp(-87) ~ 1.6e-38 (2^n stays a normal number);
// softmax adds such terms to a sum of at least 1, where they vanish. A NaN argument gives NaN.
inline fvec exp_neg(fvec x) {
  x = x < -87.0f ? bcast(-87.0f) : x;
  // round(x log2 e) to nearest even by the 1.5 * 2^23 shift (|x log2 e| < 2^22).
  const fvec n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  fvec r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  fvec p = bcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // In unsigned arithmetic: a NaN argument converts to INT_MIN, and a negative left shift is undefined.
  const uvec e = (__builtin_convertvector(__builtin_convertvector(n, ivec) + 127, uvec)) << 23;
  fvec two_n;
  std::memcpy(&two_n, &e, sizeof two_n);
  return p * two_n;
}

// Lanes l of a vector starting at column j that lie below n.
inline fvec keep_below(fvec v, int64_t j, int64_t n) {
  ivec idx;
  for (int l = 0; l < kV; ++l) idx[l] = l;
  return (idx + static_cast<int32_t>(j)) < static_cast<int32_t>(n) ? v : fvec{};
}

float row_max(const float* x, int64_t n) {
  fvec m = bcast(-__builtin_inff());
  int64_t j = 0;
  for (; j + kV <= n; j += kV) {
    const fvec v = load(x + j);
    m = v > m ? v : m;
  }
  float r = hmax(m);
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

// s[j] = exp(s[j] - sub) for j < n and 0 for j in [n, zero_to) (a multiple of 16); returns the sum
// of the exps (vector lanes, then hsum).
float exp_row(float* s, int64_t n, float sub, int64_t zero_to) {
  fvec acc = fvec{};
  const fvec sv = bcast(sub);
  int64_t j = 0;
  for (; j + kV <= n; j += kV) {
    const fvec e = exp_neg(load(s + j) - sv);
    store(s + j, e);
    acc += e;
  }
  if (j < n) {
    const fvec e = keep_below(exp_neg(load(s + j) - sv), j, n);
    store(s + j, e);
    acc += e;
    j += kV;
  }
  for (; j < zero_to; j += kV) store(s + j, fvec{});
  return hsum(acc);
}

// Score tile: c[r][j0 .. j0 + 16) = alpha * sum_{c < d} a[r][c] * bt[c][j0 ..] for R rows.
template <int R>
void nt_tile(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t d, int64_t j0, float alpha, float* c,
             int64_t ldc) {
  constexpr int NB = kScoreVecs;
  fvec acc[R][NB];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NB; ++v) acc[r][v] = fvec{};
  }
  for (int64_t x = 0; x < d; ++x) {
    fvec b[NB];
    for (int v = 0; v < NB; ++v) b[v] = load(bt + x * ldb + j0 + v * kV);
    for (int r = 0; r < R; ++r) {
      const fvec ar = bcast(a[r * lda + x]);
      for (int v = 0; v < NB; ++v) acc[r][v] += ar * b[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NB; ++v) store(c + r * ldc + j0 + v * kV, acc[r][v] * alpha);
  }
}

// c = alpha * a bt over the causal part: row i gets the 16-column blocks covering columns 0..i (in
// tiles of kScoreRows rows, the blocks up to the tile's last row).
void scores(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t T, int64_t d, float alpha, float* c,
            int64_t ldc) {
  constexpr int R = kScoreRows;
  int64_t i0 = 0;
  for (; i0 + R <= T; i0 += R) {
    for (int64_t j0 = 0; j0 < i0 + R; j0 += kBlk) {
      nt_tile<R>(a + i0 * lda, lda, bt, ldb, d, j0, alpha, c + i0 * ldc, ldc);
    }
  }
  for (; i0 < T; ++i0) {
    for (int64_t j0 = 0; j0 <= i0; j0 += kBlk) nt_tile<1>(a + i0 * lda, lda, bt, ldb, d, j0, alpha, c + i0 * ldc, ldc);
  }
}

// Product tile: rows r < R of c (NV vectors each) = rs[r] * sum_j A(r, j) * b[j] over row r's own
// causal range, with A(r, j) = a[r * lda + j] or, transposed, a[j * lda + r]; added to c's values when
// accumulate. Rows [i0, i0 + R): lower (not kTrans), row r sums j in [0, i0 + r]; upper (kTrans), row
// r sums j in [i0 + r, T). The tile runs the shared range [lo, hi) for all rows and the diagonal block
// row by row, so no row touches a b[j] outside its range (a non-finite one there would give 0 * inf).
template <int R, int NV, bool kTrans>
void nn_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t i0, int64_t T, const float* rs,
             bool accumulate, float* c, int64_t ldc) {
  fvec acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = fvec{};
  }
  // Shared range: lower j in [0, i0], upper j in [i0 + R - 1, T).
  const int64_t lo = kTrans ? i0 + R - 1 : 0, hi = kTrans ? T : i0 + 1;
  for (int64_t j = lo; j < hi; ++j) {
    fvec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + j * ldb + v * kV);
    for (int r = 0; r < R; ++r) {
      const fvec x = bcast(kTrans ? a[j * lda + r] : a[r * lda + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  // Diagonal block: lower j = i0 + t (t in 1..R-1) for rows r >= t; upper j = i0 + t (t in 0..R-2) for rows r <= t.
  for (int t = kTrans ? 0 : 1; t < (kTrans ? R - 1 : R); ++t) {
    const int64_t j = i0 + t;
    fvec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + j * ldb + v * kV);
    for (int r = kTrans ? 0 : t; r < (kTrans ? t + 1 : R); ++r) {
      const fvec x = bcast(kTrans ? a[j * lda + r] : a[r * lda + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      fvec y = rs ? acc[r][v] * rs[r] : acc[r][v];
      if (accumulate) y = load(c + r * ldc + v * kV) + y;
      store(c + r * ldc + v * kV, y);
    }
  }
}

// c[i] (+)= rs[i] * sum_j A(i, j) b[j] over the causal range: j in [0, i] for A = a (lower
// triangle), j in [i, T) for A = a^T (a's lower triangle read as an upper one); rows of NV vectors,
// in tiles of R rows and NVC vectors.
template <int NV, bool kTrans>
void product(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t T, const float* rs, bool accumulate,
             float* c, int64_t ldc) {
  constexpr int NVC = kVregs >= 32 ? NV : 2;
  constexpr int R = kVregs >= 32 ? (16 / NV > 8 ? 8 : 16 / NV) : (kVregs - 1 - NVC) / NVC;
  static_assert(NV % NVC == 0 && R >= 1 && R <= 8, "product tiles");
  int64_t i0 = 0;
  for (; i0 + R <= T; i0 += R) {
    const float* ai = kTrans ? a + i0 : a + i0 * lda;
    for (int64_t x = 0; x < NV * kV; x += NVC * kV) {
      nn_tile<R, NVC, kTrans>(ai, lda, b + x, ldb, i0, T, rs ? rs + i0 : nullptr, accumulate, c + i0 * ldc + x, ldc);
    }
  }
  for (; i0 < T; ++i0) {
    const float* ai = kTrans ? a + i0 : a + i0 * lda;
    for (int64_t x = 0; x < NV * kV; x += NVC * kV) {
      nn_tile<1, NVC, kTrans>(ai, lda, b + x, ldb, i0, T, rs ? rs + i0 : nullptr, accumulate, c + i0 * ldc + x, ldc);
    }
  }
}

// bt[x][i] = b[i][x] for i < T, 0 for i in [T, Tp).
void transpose(const float* b, int64_t ldb, int64_t T, int64_t d, int64_t Tp, float* bt) {
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t x = 0; x < d; ++x) bt[x * Tp + i] = b[i * ldb + x];
  }
  for (int64_t x = 0; x < d; ++x) {
    for (int64_t i = T; i < Tp; ++i) bt[x * Tp + i] = 0.0f;
  }
}

struct Work {
  float *kt, *vt, *s, *dp, *rs;
};
Work split(float* work, int64_t T, int64_t d) {
  const int64_t Tp = round16(T);
  Work w;
  w.kt = work;
  w.vt = w.kt + d * Tp;
  w.s = w.vt + d * Tp;
  w.dp = w.s + T * Tp;
  w.rs = w.dp + T * Tp;  // T floats
  return w;
}

template <int U>
void forward_nv(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T,
                float scale, float* o, int64_t ldo, float* lse, float* work) {
  constexpr int NV = U * kBlk / kV;  // vectors per row of d = 16 U floats
  const int64_t d = U * kBlk, Tp = round16(T);
  const Work w = split(work, T, d);
  transpose(k, ldk, T, d, Tp, w.kt);
  scores(q, ldq, w.kt, Tp, T, d, scale, w.s, Tp);
  for (int64_t i = 0; i < T; ++i) {
    float* s = w.s + i * Tp;
    const float m = row_max(s, i + 1);
    const float l = exp_row(s, i + 1, m, min64(Tp, round16(i + 17)));
    w.rs[i] = 1.0f / l;
    lse[i] = m + logf(l);
  }
  product<NV, false>(w.s, Tp, v, ldv, T, w.rs, false, o, ldo);
}

template <int U>
void backward_nv(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, const float* o,
                 int64_t ldo, const float* g, int64_t ldg, const float* lse, int64_t T, float scale, float* dq,
                 int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, bool accumulate_kv, float* work) {
  constexpr int NV = U * kBlk / kV;  // vectors per row of d = 16 U floats
  const int64_t d = U * kBlk, Tp = round16(T);
  const Work w = split(work, T, d);
  transpose(k, ldk, T, d, Tp, w.kt);
  transpose(v, ldv, T, d, Tp, w.vt);
  scores(q, ldq, w.kt, Tp, T, d, scale, w.s, Tp);  // scale q k^T
  scores(g, ldg, w.vt, Tp, T, d, 1.0f, w.dp, Tp);  // dP = g v^T
  for (int64_t i = 0; i < T; ++i) {
    const int64_t zero_to = min64(Tp, round16(i + 17));
    float* s = w.s + i * Tp;
    exp_row(s, i + 1, lse[i], zero_to);  // P
    // D_i = rowsum(g_i * o_i)
    fvec acc = fvec{};
    for (int64_t x = 0; x < d; x += kV) acc += load(g + i * ldg + x) * load(o + i * ldo + x);
    const fvec di = bcast(hsum(acc));
    // dS = P * (dP - D_i) * scale on the causal part, zero past it.
    float* ds = w.dp + i * Tp;
    const fvec sc = bcast(scale);
    int64_t j = 0;
    for (; j < i + 1; j += kV) store(ds + j, keep_below(load(s + j) * (load(ds + j) - di) * sc, j, i + 1));
    for (; j < zero_to; j += kV) store(ds + j, fvec{});
  }
  product<NV, false>(w.dp, Tp, k, ldk, T, nullptr, false, dq, lddq);         // dq = dS k
  product<NV, true>(w.dp, Tp, q, ldq, T, nullptr, accumulate_kv, dk, lddk);  // dk = dS^T q
  product<NV, true>(w.s, Tp, g, ldg, T, nullptr, accumulate_kv, dv, lddv);   // dv = P^T g
}

// Calls f(Units<d / 16>{}) for the head sizes the kernels take (attention_kernel_supports).
template <int U>
struct Units {
  static constexpr int value = U;
};
template <typename F>
void with_units(int64_t d, F f) {
  if (d % kBlk != 0) __builtin_trap();
  switch (d / kBlk) {
    case 1:
      return f(Units<1>{});
    case 2:
      return f(Units<2>{});
    case 3:
      return f(Units<3>{});
    case 4:
      return f(Units<4>{});
    case 5:
      return f(Units<5>{});
    case 6:
      return f(Units<6>{});
    case 7:
      return f(Units<7>{});
    case 8:
      return f(Units<8>{});
  }
  __builtin_trap();  // d outside attention_kernel_supports
}

void forward(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T,
             int64_t d, float scale, float* o, int64_t ldo, float* lse, float* work) {
  with_units(d, [&](auto u) { forward_nv<decltype(u)::value>(q, ldq, k, ldk, v, ldv, T, scale, o, ldo, lse, work); });
}

void backward(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, const float* o,
              int64_t ldo, const float* g, int64_t ldg, const float* lse, int64_t T, int64_t d, float scale, float* dq,
              int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, bool accumulate_kv, float* work) {
  with_units(d, [&](auto u) {
    backward_nv<decltype(u)::value>(q, ldq, k, ldk, v, ldv, o, ldo, g, ldg, lse, T, scale, dq, lddq, dk, lddk, dv, lddv,
                                    accumulate_kv, work);
  });
}

}  // namespace

extern const AttentionKernels kKernels;
const AttentionKernels kKernels = {BITQAT_ATTN_NAME, forward, backward};

}  // namespace bitqat::models::cpu::BITQAT_ATTN_NS
