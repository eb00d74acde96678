#include "cuda/reference.hpp"

#include "cuda/quant_codes.hpp"

#include <algorithm>
#include <cmath>

namespace bitqat::cuda {

float round_half_away_ref(float v) { return round_half_away(v); }

void quantize_rows_ref(const float* x, int64_t m, int64_t k, int64_t ldq, float eps, int qmax, const float* norm_weight,
                       double norm_eps, int8_t* q, float* scales) {
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * k;
    if (norm_weight) {
      rms_norm_row(xr, k, norm_weight, norm_eps, row.data());
      xr = row.data();
    }
    scales[i] = act_quant_row(xr, k, ldq, eps, qmax, q + i * ldq);
  }
}

void quantize_tensor_ref(const float* x, int64_t n, float eps, int qmax, int8_t* q, float* scale) {
  float amax = 0;
  const bool finite = absmax(x, n, &amax);
  scale[0] = act_scale(amax, eps, qmax, finite);
  for (int64_t i = 0; i < n; ++i) q[i] = act_code(x[i], scale[0], qmax);
}

void weight_scales_ref(const float* w, int64_t rows, int64_t cols, int64_t group, bool per_tensor, float* gamma,
                       float* mean) {
  if (per_tensor) {
    const double count = static_cast<double>(rows) * static_cast<double>(cols);
    gamma[0] = static_cast<float>(canonical_sum(rows, [&](int64_t r) { return abs_sum(w + r * cols, cols); }) / count);
    if (mean) {
      mean[0] =
          static_cast<float>(canonical_sum(rows, [&](int64_t r) { return plain_sum(w + r * cols, cols); }) / count);
    }
    return;
  }
  const int64_t groups = scale_groups(cols, group);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t lo = g * group, n = std::min(cols, lo + group) - lo;
      gamma[r * groups + g] = static_cast<float>(abs_sum(w + r * cols + lo, n) / static_cast<double>(n));
      if (mean) mean[r * groups + g] = static_cast<float>(plain_sum(w + r * cols + lo, n) / static_cast<double>(n));
    }
  }
}

void weight_codes_ref(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                      const float* gamma, const float* mean, float eps, int8_t* codes) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t s = r * scale_stride + (scale_stride > 0 ? c / group : 0);
      const float v = w[r * cols + c];
      codes[r * cols + c] = mean ? binary_code(v, mean[s]) : ternary_code(v, gamma[s], eps);
    }
  }
}

namespace {
float blend(float v, float d, float lambda) { return lambda == 1.0f ? d : (lambda == 0.0f ? v : v + lambda * (d - v)); }
}  // namespace

void act_fake_quant_ref(const float* x, int64_t m, int64_t k, float eps, int qmax, float lambda, float* out,
                        float* scales) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * k;
    float amax = 0;
    const bool finite = absmax(xr, k, &amax);
    const float s = act_scale(amax, eps, qmax, finite);
    scales[i] = s;
    for (int64_t j = 0; j < k; ++j) {
      const float v = xr[j];
      out[i * k + j] =
          finite ? blend(v, static_cast<float>(act_code(v, s, qmax)) / s, lambda) : (lambda == 0.0f ? v : NAN);
    }
  }
}

void act_ste_backward_ref(const float* g, const float* x, const float* scales, int64_t m, int64_t k, int qmax,
                          float clip, float lambda, float* dx) {
  for (int64_t i = 0; i < m * k; ++i) {
    const float inside = std::fabs(x[i]) * scales[i / k] / static_cast<float>(qmax) <= clip ? 1.0f : 0.0f;
    dx[i] = g[i] * ((1.0f - lambda) + lambda * inside);
  }
}

void ternary_fake_quant_ref(const float* w, int64_t rows, int64_t cols, int64_t group, int64_t scale_stride,
                            const float* gamma, float eps, float lambda, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float gm = gamma[r * scale_stride + (scale_stride > 0 ? c / group : 0)];
      const float v = w[r * cols + c];
      out[r * cols + c] = blend(v, static_cast<float>(ternary_code(v, gm, eps)) * gm, lambda);
    }
  }
}

void quantize_activations_ref(const float* x, int64_t m, int64_t k, int64_t kp, float eps, const float* norm_weight,
                              float norm_eps, int8_t* q, float* scales, int32_t* rowsums) {
  quantize_rows_ref(x, m, k, kp, eps, act_qmax(8), norm_weight, static_cast<double>(norm_eps), q, scales);
  for (int64_t i = 0; i < m; ++i) {
    if (rowsums) {
      int32_t sum = 0;
      for (int64_t j = 0; j < kp; ++j) sum += q[i * kp + j];
      rowsums[i] = sum;
    }
  }
}

void quantize_ternary_ref(const float* w, int64_t n, int64_t k, ScaleKind kind, int64_t group, float eps, int8_t* codes,
                          float* scales) {
  const int64_t g = kind == ScaleKind::kPerGroup ? group : k;
  const int64_t groups = kind == ScaleKind::kPerGroup ? scale_groups(k, group) : 1;
  if (kind == ScaleKind::kPerTensor) {
    const double total = canonical_sum(n, [&](int64_t r) { return abs_sum(w + r * k, k); });
    scales[0] = static_cast<float>(total / (static_cast<double>(n) * static_cast<double>(k)));
  } else {
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t lo = gi * g, hi = std::min(k, lo + g);
        scales[r * groups + gi] = static_cast<float>(abs_sum(w + r * k + lo, hi - lo) / static_cast<double>(hi - lo));
      }
    }
  }
  const int64_t stride = kind == ScaleKind::kPerTensor ? 0 : groups;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < k; ++j)
      codes[r * k + j] = ternary_code(w[r * k + j], scales[scale_index(r, j, stride, g)], eps);
  }
}

void rms_norm_ref(const float* x, int64_t m, int64_t k, const float* w, double eps, float* y, float* r) {
  for (int64_t i = 0; i < m; ++i) {
    const float ri = rms_norm_row(x + i * k, k, w, eps, y + i * k);
    if (r) r[i] = ri;
  }
}

void pack_ternary_ref(const int8_t* codes, int64_t n, int64_t k, uint32_t* packed) {
  const int64_t wpr = words_per_row(k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t wi = 0; wi < wpr; ++wi) {
      uint32_t word = 0;
      for (int t = 0; t < kCodesPerWord; ++t) {
        const int64_t j = wi * kCodesPerWord + t;
        const uint32_t c = j < k ? static_cast<uint32_t>(codes[r * k + j] + 1) : 1u;
        word |= c << code_shift(t);
      }
      packed[r * wpr + wi] = word;
    }
  }
}

void unpack_ternary_ref(const uint32_t* packed, int64_t n, int64_t k, int8_t* codes) {
  const int64_t wpr = words_per_row(k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < k; ++j) {
      const uint32_t word = packed[r * wpr + j / kCodesPerWord];
      codes[r * k + j] =
          static_cast<int8_t>(static_cast<int>((word >> code_shift(static_cast<int>(j % kCodesPerWord))) & 3u) - 1);
    }
  }
}

void int_matmul_ref(const int8_t* q, int64_t kp, const uint32_t* packed, int64_t m, int64_t n, int64_t k,
                    int64_t groups, int64_t group, int32_t* out) {
  std::vector<int8_t> w(static_cast<size_t>(n * k));
  unpack_ternary_ref(packed, n, k, w.data());
  const int64_t g = groups > 1 ? group : k;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t gi = 0; gi < groups; ++gi) {
        int32_t acc = 0;
        for (int64_t j = gi * g; j < std::min(k, (gi + 1) * g); ++j)
          acc += q[i * kp + j] * w[static_cast<size_t>(r * k + j)];
        out[(i * n + r) * groups + gi] = acc;
      }
    }
  }
}

void int_matmul_offset_ref(const int8_t* q, int64_t kp, const uint32_t* packed, const int32_t* rowsums, int64_t m,
                           int64_t n, int64_t k, int32_t* out) {
  const int64_t wpr = words_per_row(k);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < n; ++r) {
      int32_t acc = 0;
      for (int64_t j = 0; j < kp; ++j) {
        const uint32_t word = packed[r * wpr + j / kCodesPerWord];
        acc += q[i * kp + j] * static_cast<int32_t>((word >> code_shift(static_cast<int>(j % kCodesPerWord))) & 3u);
      }
      out[i * n + r] = acc - rowsums[i];
    }
  }
}

void epilogue_ref(const int32_t* y_int, int64_t m, int64_t n, int64_t groups, const float* wscales,
                  int64_t scale_stride_n, const float* xscales, const float* bias, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < n; ++r) {
      float acc = 0.0f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        acc += static_cast<float>(y_int[(i * n + r) * groups + gi]) *
               wscales[r * scale_stride_n + (scale_stride_n > 1 ? gi : 0)];
      }
      y[i * n + r] = acc / xscales[i] + (bias ? bias[r] : 0.0f);
    }
  }
}

}  // namespace bitqat::cuda
