#include "checkpoints/gguf_quants.hpp"

#include <c10/util/Half.h>
#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

namespace bitqat::checkpoints::gguf {
namespace {

constexpr BlockTraits kTraits[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {30, "BF16", 1, 2},     {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},    {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},
    {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176}, {14, "Q6_K", 256, 210},
};
static_assert(2 + 16 == 18 && 2 + 2 + 16 == 20 && 2 + 4 + 16 == 22 && 2 + 2 + 4 + 16 == 24 && 2 + 32 == 34,
              "32-weight blocks: fp16 fields, 5th-bit words and nibbles or int8s");
static_assert(2 + 2 + 12 + 128 == 144 && 2 + 2 + 12 + 32 + 128 == 176 && 128 + 64 + 16 + 2 == 210,
              "256-weight K blocks: d (and dmin), packed scales, high bits, low nibbles");

float half(const uint8_t* p) {
  c10::Half h;
  std::memcpy(&h.x, p, 2);
  return static_cast<float>(h);
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

// One block each: `in` at the block, 32 or 256 floats out.
void q4_0(const uint8_t* in, float* y) {
  const float d = half(in);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((in[2 + j] & 0xF) - 8) * d;
    y[j + 16] = static_cast<float>((in[2 + j] >> 4) - 8) * d;
  }
}

void q4_1(const uint8_t* in, float* y) {
  const float d = half(in), m = half(in + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(in[4 + j] & 0xF) * d + m;
    y[j + 16] = static_cast<float>(in[4 + j] >> 4) * d + m;
  }
}

void q5(const uint8_t* in, float* y, bool with_min) {
  const float d = half(in), m = with_min ? half(in + 2) : 0.0f;
  const uint8_t* p = in + (with_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    if (with_min) {
      y[j] = static_cast<float>(lo) * d + m;
      y[j + 16] = static_cast<float>(hi) * d + m;
    } else {
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

void q8_0(const uint8_t* in, float* y) {
  const float d = half(in);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(in[2 + j])) * d;
}

void q45_k(const uint8_t* in, float* y, bool five) {
  const float d = half(in), dmin = half(in + 2);
  const uint8_t* scales = in + 4;
  const uint8_t* qh = five ? in + 16 : nullptr;
  const uint8_t* q = in + (five ? 48 : 16);
  for (int c = 0; c < 4; ++c, q += 32) {
    float sc = 0, m = 0;
    scale_min_k4(2 * c, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(2 * c + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const int h1 = (five && ((qh[l] >> (2 * c)) & 1)) ? 16 : 0;
      const int h2 = (five && ((qh[l] >> (2 * c + 1)) & 1)) ? 16 : 0;
      y[64 * c + l] = d1 * static_cast<float>((q[l] & 0xF) + h1) - m1;
      y[64 * c + 32 + l] = d2 * static_cast<float>((q[l] >> 4) + h2) - m2;
    }
  }
}

void q6_k(const uint8_t* in, float* y) {
  const float d = half(in + 208);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = in + 64 * h;
    const uint8_t* qh = in + 128 + 32 * h;
    const auto* sc = reinterpret_cast<const int8_t*>(in + 192 + 8 * h);
    for (int l = 0; l < 32; ++l) {
      for (int k = 0; k < 4; ++k) {
        const uint8_t low = ql[l + 32 * (k & 1)];
        const int q = ((k < 2 ? low & 0xF : low >> 4) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
        y[128 * h + 32 * k + l] = d * static_cast<float>(sc[l / 16 + 2 * k]) * static_cast<float>(q);
      }
    }
  }
}

}  // namespace

const BlockTraits* dequant_traits(uint32_t type) {
  for (const auto& t : kTraits) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

std::string dequant_type_names() {
  std::string out;
  for (const auto& t : kTraits) out += (out.empty() ? "" : ", ") + std::string(t.name);
  return out;
}

const char* ggml_type_name(uint32_t type) {
  // ggml's enum ggml_type; 4, 5 and 31-33, 36-38 were removed from it.
  static constexpr const char* kNames[] = {
      "F32",        "F16",        "Q4_0",       "Q4_1",  "Q4_2",     "Q4_3",     "Q5_0",     "Q5_1",    "Q8_0",
      "Q8_1",       "Q2_K",       "Q3_K",       "Q4_K",  "Q5_K",     "Q6_K",     "Q8_K",     "IQ2_XXS", "IQ2_XS",
      "IQ3_XXS",    "IQ1_S",      "IQ4_NL",     "IQ3_S", "IQ2_S",    "IQ4_XS",   "I8",       "I16",     "I32",
      "I64",        "F64",        "IQ1_M",      "BF16",  "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",   "TQ2_0",
      "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4", "NVFP4",    "Q1_0",     "Q2_0"};
  return type < sizeof(kNames) / sizeof(kNames[0]) ? kNames[type] : "unknown";
}

void dequantize_row(uint32_t type, const uint8_t* in, float* out, int64_t n) {
  const auto* t = dequant_traits(type);
  if (!t || n % t->block != 0) {
    throw std::invalid_argument(
        fmt::format("gguf: cannot dequantize {} values of type {} ({})", n, ggml_type_name(type), type));
  }
  const int64_t blocks = n / t->block;
  switch (type) {
    case 0:
      std::memcpy(out, in, static_cast<size_t>(n) * 4);
      return;
    case 1:
      for (int64_t i = 0; i < n; ++i) out[i] = half(in + 2 * i);
      return;
    case 30:
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(in[2 * i] | (in[2 * i + 1] << 8)) << 16;
        std::memcpy(out + i, &bits, 4);
      }
      return;
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = in + b * t->bytes;
    float* y = out + b * t->block;
    switch (type) {
      case 2:
        q4_0(p, y);
        break;
      case 3:
        q4_1(p, y);
        break;
      case 6:
        q5(p, y, false);
        break;
      case 7:
        q5(p, y, true);
        break;
      case 8:
        q8_0(p, y);
        break;
      case 12:
        q45_k(p, y, false);
        break;
      case 13:
        q45_k(p, y, true);
        break;
      case 14:
        q6_k(p, y);
        break;
    }
  }
}

}  // namespace bitqat::checkpoints::gguf
