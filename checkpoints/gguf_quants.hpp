// The float and block-quantized ggml tensor types of the GGUFs people publish, read back to float32:
// a table of their block sizes and scalar reference dequantizers (the ground truth; never
// optimised). Layouts from ggml's ggml-common.h (block_q4_0 ... block_q6_K), values from
// ggml-quants.c (dequantize_row_*), checked against gguf-py's gguf/quants.py on files it writes.
//
// A block of `block` weights takes `bytes` bytes; fp16 fields are IEEE half, little-endian.
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
#pragma once
#include <cstdint>
#include <string>

namespace bitqat::checkpoints::gguf {

struct BlockTraits {
  uint32_t type;     // ggml's enum ggml_type number
  const char* name;  // ggml's name ("Q4_K")
  int64_t block;     // weights per block
  int64_t bytes;     // bytes per block
};

// The traits of a type that bitqat reads to float32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K); nullptr for any other number.
const BlockTraits* dequant_traits(uint32_t type);
// "F32, F16, BF16, Q4_0, ..." for messages.
std::string dequant_type_names();
// ggml's name of any type number it has or had ("Q3_K", "IQ2_XS"), else "unknown".
const char* ggml_type_name(uint32_t type);

// n float32 values from the n / block blocks at `in`; n must be a whole number of blocks of a
// dequant_traits type (std::invalid_argument otherwise).
void dequantize_row(uint32_t type, const uint8_t* in, float* out, int64_t n);

}  // namespace bitqat::checkpoints::gguf
