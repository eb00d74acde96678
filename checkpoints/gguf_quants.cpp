#include "checkpoints/gguf_quants.hpp"

#include <c10/util/Half.h>
#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

namespace bitqat::checkpoints::gguf {
namespace {

float to_float(Half bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }
Half to_half(float f) { return c10::Half(f).x; }

// Block b of a row, copied out of the (possibly unaligned) bytes.
template <typename Block>
Block block_at(const uint8_t* in, int64_t b) {
  Block x;
  std::memcpy(&x, in + b * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
  return x;
}

// Scale and min of sub-block j of a Q4_K / Q5_K block's 12 scale bytes (ggml's get_scale_min_k4):
// sub-blocks 0-3 keep 6 bits in bytes j and j + 4; 4-7 keep 4 low bits in byte j + 4 and their two
// top bits in the top bits of bytes j - 4 and j.
void scale_min_k4(int j, const uint8_t* q, float* sc, float* m) {
  if (j < 4) {
    *sc = static_cast<float>(q[j] & 63);
    *m = static_cast<float>(q[j + 4] & 63);
  } else {
    *sc = static_cast<float>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<float>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// One Q5_0 / Q5_1 block: q = nibble | fifth bit << 4; d * (q - 16) without a min, d * q + m with one.
void q5(float d, const float* m, const uint8_t* qh_bytes, const uint8_t* qs, float* y) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    if (m) {
      y[j] = static_cast<float>(lo) * d + *m;
      y[j + 16] = static_cast<float>(hi) * d + *m;
    } else {
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

// One Q4_K / Q5_K block (qh null for Q4_K).
void q45_k(float d, float dmin, const uint8_t* scales, const uint8_t* qh, const uint8_t* q, float* y) {
  for (int c = 0; c < 4; ++c, q += 32) {
    float sc = 0, m = 0;
    scale_min_k4(2 * c, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(2 * c + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const int h1 = (qh && ((qh[l] >> (2 * c)) & 1)) ? 16 : 0;
      const int h2 = (qh && ((qh[l] >> (2 * c + 1)) & 1)) ? 16 : 0;
      y[64 * c + l] = d1 * static_cast<float>((q[l] & 0xF) + h1) - m1;
      y[64 * c + 32 + l] = d2 * static_cast<float>((q[l] >> 4) + h2) - m2;
    }
  }
}

uint8_t to_code(int8_t w) {
  if (w < -1 || w > 1) throw std::invalid_argument(fmt::format("gguf: ternary code {} is not in {{-1, 0, 1}}", w));
  return static_cast<uint8_t>(w + 1);
}

// ceil(v * 256 / 243): the fixed-point byte from which ((byte * 3^t mod 256) * 3) >> 8 reads trit t.
uint8_t trits_to_byte(unsigned v) { return static_cast<uint8_t>((v * 256 + 242) / 243); }

int trit_of(uint8_t byte, int t) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const uint8_t shifted = static_cast<uint8_t>(byte * kPow3[t]);  // mod 256, as uint8 arithmetic
  return (static_cast<unsigned>(shifted) * 3) >> 8;
}

// code * d for every weight of a row of code blocks, decoded by DecodeBlock.
template <void (*DecodeBlock)(const uint8_t*, int8_t*, float*), int64_t kBlock, int64_t kBytes>
void codes_times_scale(const uint8_t* in, float* out, int64_t n) {
  int8_t codes[kBlock];
  float d = 0;
  for (int64_t b = 0; b < n / kBlock; ++b) {
    DecodeBlock(in + b * kBytes, codes, &d);
    for (int64_t j = 0; j < kBlock; ++j) out[b * kBlock + j] = static_cast<float>(codes[j]) * d;
  }
}

}  // namespace

void dequantize_row_f32(const uint8_t* in, float* out, int64_t n) { std::memcpy(out, in, static_cast<size_t>(n) * 4); }

void dequantize_row_f16(const uint8_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(block_at<Half>(in, i));
}

void dequantize_row_bf16(const uint8_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(in[2 * i] | (in[2 * i + 1] << 8)) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

void dequantize_row_q4_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK4_0; ++b, y += kQK4_0) {
    const auto x = block_at<BlockQ4_0>(in, b);
    const float d = to_float(x.d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = static_cast<float>((x.qs[j] & 0xF) - 8) * d;
      y[j + kQK4_0 / 2] = static_cast<float>((x.qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_row_q4_1(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK4_1; ++b, y += kQK4_1) {
    const auto x = block_at<BlockQ4_1>(in, b);
    const float d = to_float(x.d), m = to_float(x.m);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = static_cast<float>(x.qs[j] & 0xF) * d + m;
      y[j + kQK4_1 / 2] = static_cast<float>(x.qs[j] >> 4) * d + m;
    }
  }
}

void dequantize_row_q5_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK5_0; ++b, y += kQK5_0) {
    const auto x = block_at<BlockQ5_0>(in, b);
    q5(to_float(x.d), nullptr, x.qh, x.qs, y);
  }
}

void dequantize_row_q5_1(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK5_1; ++b, y += kQK5_1) {
    const auto x = block_at<BlockQ5_1>(in, b);
    const float m = to_float(x.m);
    q5(to_float(x.d), &m, x.qh, x.qs, y);
  }
}

void dequantize_row_q8_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK8_0; ++b, y += kQK8_0) {
    const auto x = block_at<BlockQ8_0>(in, b);
    const float d = to_float(x.d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(x.qs[j]) * d;
  }
}

void dequantize_row_q4_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const auto x = block_at<BlockQ4_K>(in, b);
    q45_k(to_float(x.d), to_float(x.dmin), x.scales, nullptr, x.qs, y);
  }
}

void dequantize_row_q5_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const auto x = block_at<BlockQ5_K>(in, b);
    q45_k(to_float(x.d), to_float(x.dmin), x.scales, x.qh, x.qs, y);
  }
}

void dequantize_row_q6_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const auto x = block_at<BlockQ6_K>(in, b);
    const float d = to_float(x.d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x.ql + 64 * h;
      const uint8_t* qh = x.qh + 32 * h;
      const int8_t* sc = x.scales + 8 * h;
      for (int l = 0; l < 32; ++l) {
        for (int k = 0; k < 4; ++k) {
          const uint8_t low = ql[l + 32 * (k & 1)];
          const int q = ((k < 2 ? low & 0xF : low >> 4) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
          y[128 * h + 32 * k + l] = d * static_cast<float>(sc[l / 16 + 2 * k]) * static_cast<float>(q);
        }
      }
    }
  }
}

void dequantize_row_tq1_0(const uint8_t* in, float* out, int64_t n) {
  codes_times_scale<decode_tq1_0_block, kQK, kTQ1_0Bytes>(in, out, n);
}
void dequantize_row_tq2_0(const uint8_t* in, float* out, int64_t n) {
  codes_times_scale<decode_tq2_0_block, kQK, kTQ2_0Bytes>(in, out, n);
}
void dequantize_row_q1_0(const uint8_t* in, float* out, int64_t n) {
  codes_times_scale<decode_q1_0_block, kQK1_0, kQ1_0Bytes>(in, out, n);
}
void dequantize_row_q2_0(const uint8_t* in, float* out, int64_t n) {
  codes_times_scale<decode_q2_0_block, kQK2_0, kQ2_0Bytes>(in, out, n);
}

void quantize_row_f32(const float* in, uint8_t* out, int64_t n) { std::memcpy(out, in, static_cast<size_t>(n) * 4); }

void quantize_row_f16(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const Half h = to_half(in[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

void encode_tq2_0_block(const int8_t* codes, float d, uint8_t* out) {
  BlockTQ2_0 x{};
  for (int i = 0; i < kQK; ++i) {
    const int h = i / 128, l = (i % 128) / 32, m = i % 32;
    x.qs[32 * h + m] |= static_cast<uint8_t>(to_code(codes[i]) << (2 * l));
  }
  x.d = to_half(d);
  std::memcpy(out, &x, sizeof x);
}

void decode_tq2_0_block(const uint8_t* in, int8_t* codes, float* d) {
  const auto x = block_at<BlockTQ2_0>(in, 0);
  for (int i = 0; i < kQK; ++i) {
    const int h = i / 128, l = (i % 128) / 32, m = i % 32;
    codes[i] = static_cast<int8_t>(((x.qs[32 * h + m] >> (2 * l)) & 3) - 1);
  }
  *d = to_float(x.d);
}

void encode_tq1_0_block(const int8_t* codes, float d, uint8_t* out) {
  BlockTQ1_0 x{};
  for (int m = 0; m < 32; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 5; ++t) v = v * 3 + to_code(codes[32 * t + m]);
    x.qs[m] = trits_to_byte(v);
  }
  for (int m = 0; m < 16; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 5; ++t) v = v * 3 + to_code(codes[160 + 16 * t + m]);
    x.qs[32 + m] = trits_to_byte(v);
  }
  for (int m = 0; m < 4; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 4; ++t) v = v * 3 + to_code(codes[240 + 4 * t + m]);
    x.qh[m] = trits_to_byte(v * 3);  // four trits in the top positions of a five-trit byte
  }
  x.d = to_half(d);
  std::memcpy(out, &x, sizeof x);
}

void decode_tq1_0_block(const uint8_t* in, int8_t* codes, float* d) {
  const auto x = block_at<BlockTQ1_0>(in, 0);
  for (int m = 0; m < 32; ++m) {
    for (int t = 0; t < 5; ++t) codes[32 * t + m] = static_cast<int8_t>(trit_of(x.qs[m], t) - 1);
  }
  for (int m = 0; m < 16; ++m) {
    for (int t = 0; t < 5; ++t) codes[160 + 16 * t + m] = static_cast<int8_t>(trit_of(x.qs[32 + m], t) - 1);
  }
  for (int m = 0; m < 4; ++m) {
    for (int t = 0; t < 4; ++t) codes[240 + 4 * t + m] = static_cast<int8_t>(trit_of(x.qh[m], t) - 1);
  }
  *d = to_float(x.d);
}

void encode_q2_0_block(const int8_t* codes, float d, uint8_t* out) {
  BlockQ2_0 x{};
  x.d = to_half(d);
  for (int j = 0; j < kQK2_0; ++j) {
    if (codes[j] < -1 || codes[j] > 2) {
      throw std::invalid_argument(fmt::format("gguf: Q2_0 code {} is not in {{-1, 0, 1, 2}}", codes[j]));
    }
    x.qs[j / 4] |= static_cast<uint8_t>((codes[j] + 1) << (2 * (j % 4)));
  }
  std::memcpy(out, &x, sizeof x);
}

void decode_q2_0_block(const uint8_t* in, int8_t* codes, float* d) {
  const auto x = block_at<BlockQ2_0>(in, 0);
  *d = to_float(x.d);
  for (int j = 0; j < kQK2_0; ++j) codes[j] = static_cast<int8_t>(((x.qs[j / 4] >> (2 * (j % 4))) & 3) - 1);
}

void encode_q1_0_block(const int8_t* codes, float d, uint8_t* out) {
  BlockQ1_0 x{};
  x.d = to_half(d);
  for (int j = 0; j < kQK1_0; ++j) {
    if (codes[j] != -1 && codes[j] != 1) {
      throw std::invalid_argument(fmt::format("gguf: Q1_0 code {} is not -1 or +1", codes[j]));
    }
    if (codes[j] == 1) x.qs[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
  }
  std::memcpy(out, &x, sizeof x);
}

void decode_q1_0_block(const uint8_t* in, int8_t* codes, float* d) {
  const auto x = block_at<BlockQ1_0>(in, 0);
  *d = to_float(x.d);
  for (int j = 0; j < kQK1_0; ++j) codes[j] = static_cast<int8_t>((x.qs[j / 8] >> (j % 8)) & 1 ? 1 : -1);
}

}  // namespace bitqat::checkpoints::gguf
