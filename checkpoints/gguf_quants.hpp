// The block layouts and scalar reference codecs of every ggml tensor type bitqat reads or writes (the
// ground truth; never optimised). Layouts are ggml's ggml/src/ggml-common.h block structs, values those
// of ggml-quants.c (dequantize_row_*), checked bit for bit against gguf-py and ggml itself. The table
// that names these types and pairs each with its codecs is gguf_types.hpp.
//
// fp16 fields are IEEE half, little-endian (ggml_half). Blocks of the float types are one element.
//   BF16 (1 weight, 2 bytes): the top half of a float32.
//   Q4_0 (32, 18): d; qs[16]. Weight j < 16 = d * ((qs[j] & 15) - 8), weight 16 + j uses qs[j] >> 4.
//   Q4_1 (32, 20): d, m; qs[16]. Weight = d * q + m with q as in Q4_0 without the - 8.
//   Q5_0 (32, 22): d; qh[4] (a little-endian uint32); qs[16]. Weight j's fifth bit is bit j of qh
//     (weight 16 + j: bit 16 + j); weight = d * (q - 16).
//   Q5_1 (32, 24): d, m; qh[4]; qs[16]. Weight = d * q + m.
//   Q8_0 (32, 34): d; int8 qs[32]. Weight = d * qs[j].
//   Q4_K (256, 144): d, dmin; scales[12] (eight 6-bit scales and eight 6-bit mins); qs[128]. Sub-block
//     s (32 weights) has scale d * sc[s] and offset dmin * m[s]; the 64 weights 64c .. 64c + 63 take
//     the low then the high nibbles of qs[32c .. 32c + 31]. Weight = (d * sc) * q - (dmin * m).
//   Q5_K (256, 176): d, dmin; scales[12]; qh[32]; qs[128]. As Q4_K with a fifth bit: weight 64c + l
//     (l < 32) has bit 2c of qh[l], weight 64c + 32 + l bit 2c + 1.
//   Q6_K (256, 210): ql[128]; qh[64]; int8 scales[16]; d. Each half h (128 weights) uses ql[64h ..],
//     qh[32h ..] and scales[8h ..]: weight 128h + 32k + l (k < 4, l < 32) has low nibble from
//     ql[64h + l + 32 (k & 1)] (k < 2: low nibble, else high) and two high bits (qh[32h + l] >> 2k) & 3;
//     weight = (d * scales[8h + l / 16 + 2k]) * (q - 32).
// Products are rounded as ggml's C code rounds them (one float operation at a time, left to right).
//
// The types bitqat writes hold integer codes and one fp16 scale d per block; a weight is code * d.
// Ternary blocks of kQK = 256 weights, code in {-1, 0, 1} stored as c = code + 1:
//   TQ2_0 (66 bytes): qs[64], d. Weight 128h + 32l + m (h < 2, l < 4, m < 32) sits in bits 2l of
//     qs[32h + m].
//   TQ1_0 (54 bytes): qs[48], qh[4], d. Weights [0, 160) as 32 bytes of 5 trits (weight 32t + m in
//     byte m, t = 0 the most significant trit), [160, 240) as 16 bytes of 5 trits (weight
//     160 + 16t + m in byte 32 + m), [240, 256) as 4 bytes of 4 trits (weight 240 + 4t + m in
//     qh[m]); a byte holding the base-3 number v (4 trits: v * 3) is stored as
//     ceil(v * 256 / 243), so that trit t is ((byte * 3^t mod 256) * 3) >> 8.
// The small-block types of mainline llama.cpp (block_q2_0 / block_q1_0, dequantize_row_q2_0 /
// dequantize_row_q1_0); unlike the TQ types, d comes first:
//   Q2_0 (18 bytes per 64 weights): d, qs[16]. Weight j sits in bits 2 (j % 4) of qs[j / 4] as
//     q = code + 1, code in {-1, 0, 1, 2}; its value is code * d. 2.25 bits per weight.
//   Q1_0 (18 bytes per 128 weights): d, qs[16]. Weight j is bit j % 8 of qs[j / 8]; its value is
//     +d when the bit is 1, -d when it is 0 (code +1 / -1). 1.125 bits per weight.
#pragma once
#include <cstdint>

namespace bitqat::checkpoints::gguf {

using Half = uint16_t;  // the bits of an IEEE fp16 (ggml_half)

// Weights per block (ggml's QK_K, QK4_0, ...).
constexpr int kQK = 256;  // the K and ternary types
constexpr int kQK4_0 = 32, kQK4_1 = 32, kQK5_0 = 32, kQK5_1 = 32, kQK8_0 = 32;
constexpr int kQK2_0 = 64;       // weights per Q2_0 block (ggml's QK2_0)
constexpr int kQK1_0 = 128;      // weights per Q1_0 block (ggml's QK1_0)
constexpr int kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K (K_SCALE_SIZE)

// ggml-common.h's blocks, field for field; each size is asserted as ggml asserts it.
struct BlockQ4_0 {
  Half d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == sizeof(Half) + kQK4_0 / 2, "block_q4_0: d, nibbles");
struct BlockQ4_1 {
  Half d, m;
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 2 * sizeof(Half) + kQK4_1 / 2, "block_q4_1: d, m, nibbles");
struct BlockQ5_0 {
  Half d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == sizeof(Half) + sizeof(uint32_t) + kQK5_0 / 2, "block_q5_0: d, fifth bits, nibbles");
struct BlockQ5_1 {
  Half d, m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 2 * sizeof(Half) + sizeof(uint32_t) + kQK5_1 / 2,
              "block_q5_1: d, m, fifth bits, nibbles");
struct BlockQ8_0 {
  Half d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == sizeof(Half) + kQK8_0, "block_q8_0: d, int8s");
struct BlockQ4_K {
  Half d, dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_K) == 2 * sizeof(Half) + kKScaleSize + kQK / 2, "block_q4_K: d, dmin, scales, nibbles");
struct BlockQ5_K {
  Half d, dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK / 8];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_K) == 2 * sizeof(Half) + kKScaleSize + kQK / 8 + kQK / 2,
              "block_q5_K: d, dmin, scales, fifth bits, nibbles");
struct BlockQ6_K {
  uint8_t ql[kQK / 2];
  uint8_t qh[kQK / 4];
  int8_t scales[kQK / 16];
  Half d;
};
static_assert(sizeof(BlockQ6_K) == sizeof(Half) + kQK / 16 + 3 * kQK / 4,
              "block_q6_K: low nibbles, high bits, scales, d");
struct BlockTQ1_0 {
  uint8_t qs[(kQK - 4 * kQK / 64) / 5];  // 5 trits a byte
  uint8_t qh[kQK / 64];                  // 4 trits a byte
  Half d;
};
static_assert(sizeof(BlockTQ1_0) == sizeof(Half) + kQK / 64 + (kQK - 4 * kQK / 64) / 5,
              "block_tq1_0: 48 bytes of 5 trits, 4 bytes of 4 trits, d");
static_assert((kQK - 16) % 5 == 0 && 160 % 32 == 0 && 80 % 16 == 0, "TQ1_0 trit groups tile the block");
struct BlockTQ2_0 {
  uint8_t qs[kQK / 4];
  Half d;
};
static_assert(sizeof(BlockTQ2_0) == sizeof(Half) + kQK / 4, "block_tq2_0: 2-bit codes, d");
struct BlockQ2_0 {
  Half d;
  uint8_t qs[kQK2_0 / 4];
};
static_assert(sizeof(BlockQ2_0) == sizeof(Half) + kQK2_0 / 4, "block_q2_0: d, 2-bit codes");
struct BlockQ1_0 {
  Half d;
  uint8_t qs[kQK1_0 / 8];
};
static_assert(sizeof(BlockQ1_0) == sizeof(Half) + kQK1_0 / 8, "block_q1_0: d, sign bits");

// Bytes per block of the written block types (sizeof their blocks).
constexpr int kTQ2_0Bytes = sizeof(BlockTQ2_0);
constexpr int kTQ1_0Bytes = sizeof(BlockTQ1_0);
constexpr int kQ2_0Bytes = sizeof(BlockQ2_0);
constexpr int kQ1_0Bytes = sizeof(BlockQ1_0);
static_assert(kTQ2_0Bytes == 66 && kTQ1_0Bytes == 54 && kQ2_0Bytes == 18 && kQ1_0Bytes == 18,
              "the sizes llama.cpp's GGUF reader expects");

// Row decoders (ggml's to_float): the n float32 values of the n / block-size blocks at `in`. n must be
// a whole number of blocks; callers check it (gguf_types.hpp dequantize_row).
void dequantize_row_f32(const uint8_t* in, float* out, int64_t n);
void dequantize_row_f16(const uint8_t* in, float* out, int64_t n);
void dequantize_row_bf16(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q4_0(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q4_1(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q5_0(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q5_1(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q8_0(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q4_k(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q5_k(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q6_k(const uint8_t* in, float* out, int64_t n);
void dequantize_row_tq1_0(const uint8_t* in, float* out, int64_t n);  // code * d, as decode_*_block
void dequantize_row_tq2_0(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q1_0(const uint8_t* in, float* out, int64_t n);
void dequantize_row_q2_0(const uint8_t* in, float* out, int64_t n);

// Row encoders of the float types (ggml's from_float): n float32 values to n elements at `out`. F16
// rounds to nearest even (values beyond fp16's range become infinity: callers check the range).
void quantize_row_f32(const float* in, uint8_t* out, int64_t n);
void quantize_row_f16(const float* in, uint8_t* out, int64_t n);

// Block codecs of the code types: a block's codes (int8, kQK for TQ*, kQK2_0 for Q2_0, kQK1_0 for
// Q1_0) and its scale d (stored as fp16). TQ*: codes in {-1, 0, 1}; Q2_0: {-1, 0, 1, 2}; Q1_0: {-1,
// 1}. Encoders throw std::invalid_argument on other codes.
void encode_tq2_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq2_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_tq1_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq1_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_q2_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_q2_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_q1_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_q1_0_block(const uint8_t* in, int8_t* codes, float* d);

}  // namespace bitqat::checkpoints::gguf
