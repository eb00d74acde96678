// The packed ternary weight format shared by the CPU references and the CUDA kernels (host C++ and
// nvcc). No LibTorch here.
//
// A weight W [N, K] with ternary codes w in {-1, 0, +1} is stored as c = w + 1 in {0, 1, 2}, 2 bits
// each, 16 per uint32 word, rows of Kp = K rounded up to kBlockK (padding codes are c = 1, i.e. 0).
// Word j of a row holds k in [16j, 16j + 16) interleaved so that one shift and one mask yield four
// int8 lanes of consecutive k:
//
//   bits 8*b + 2*i of word j  <-  c[16j + 4i + b]      (b = byte lane 0..3, i = shift 0..3)
//   (word >> 2i) & 0x03030303  ==  bytes c[16j+4i], c[16j+4i+1], c[16j+4i+2], c[16j+4i+3]
//
// so that __vsub4(that, 0x01010101) gives the signed int8 codes for one dp4a / mma operand.
// A row is Kp / 16 words; a 16-byte load brings 64 weights. Scales (float32):
//   per tensor: 1 value; per channel: N values; per group: N x ceil(K / G), G a multiple of kGroupAlign.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BITQAT_HD __host__ __device__ __forceinline__
#else
#define BITQAT_HD inline
#endif

namespace bitqat::cuda {

constexpr int kCodesPerWord = 16;
constexpr int kBlockK = 128;     // row padding: 128 weights = 32 bytes = two 16-byte loads
constexpr int kGroupAlign = 64;  // group sizes are multiples of one 16-byte load
static_assert(kBlockK % kCodesPerWord == 0, "a block holds whole words");
static_assert(kBlockK % kGroupAlign == 0, "blocks hold whole load chunks");
static_assert(kGroupAlign % (4 * kCodesPerWord) == 0, "a group is whole 16-byte loads");
static_assert(kBlockK * 2 / 8 == 32, "a block is 32 bytes");

enum class ScaleKind : int { kPerTensor = 0, kPerChannel = 1, kPerGroup = 2 };

BITQAT_HD int64_t padded_k(int64_t k) { return (k + kBlockK - 1) / kBlockK * kBlockK; }
BITQAT_HD int64_t words_per_row(int64_t k) { return padded_k(k) / kCodesPerWord; }
BITQAT_HD int64_t scale_groups(int64_t k, int64_t group) { return (k + group - 1) / group; }

// Bit position of code k inside its word.
BITQAT_HD int code_shift(int k_in_word) { return 8 * (k_in_word & 3) + 2 * (k_in_word >> 2); }

// Index of the scale of (row n, column k): scale_stride_n is 0 (per tensor), 1 (per channel) or
// the number of groups (per group); group is the group size (K for per tensor / channel).
BITQAT_HD int64_t scale_index(int64_t n, int64_t k, int64_t scale_stride_n, int64_t group) {
  return n * scale_stride_n + (scale_stride_n > 1 ? k / group : 0);
}

}  // namespace bitqat::cuda
