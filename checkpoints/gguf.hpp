// GGUF v3 files (ggml / llama.cpp): a writer and a reader, and the block types TQ2_0, TQ1_0, Q2_0
// and Q1_0 as plain scalar reference codecs (the ground truth; never optimised).
//
// File: "GGUF", uint32 version 3, uint64 tensor count, uint64 metadata count, the metadata
// (string key, uint32 value type, value), the tensor infos (string name, uint32 n_dims, uint64
// dims innermost first, uint32 ggml type, uint64 offset into the data), zero padding to the
// alignment (general.alignment, default 32), then the data, each tensor starting at a multiple of
// the alignment. Strings are uint64 length + bytes; everything is little-endian.
//
// Ternary blocks of kQK = 256 weights with one fp16 scale d; a weight is code * d, code in {-1,0,1},
// stored as c = code + 1:
//   TQ2_0 (66 bytes): qs[64], d. Weight 128h + 32l + m (h < 2, l < 4, m < 32) sits in bits 2l of
//     qs[32h + m].
//   TQ1_0 (54 bytes): qs[48], qh[4], d. Weights [0, 160) as 32 bytes of 5 trits (weight 32t + m in
//     byte m, t = 0 the most significant trit), [160, 240) as 16 bytes of 5 trits (weight
//     160 + 16t + m in byte 32 + m), [240, 256) as 4 bytes of 4 trits (weight 240 + 4t + m in
//     qh[m]); a byte holding the base-3 number v (4 trits: v * 3) is stored as
//     ceil(v * 256 / 243), so that trit t is ((byte * 3^t mod 256) * 3) >> 8.
//
// The small-block types of mainline llama.cpp (ggml/src/ggml-common.h block_q2_0 / block_q1_0,
// ggml-quants.c dequantize_row_q2_0 / dequantize_row_q1_0); unlike the TQ types, d comes first:
//   Q2_0 (18 bytes per 64 weights): d, qs[16]. Weight j sits in bits 2 (j % 4) of qs[j / 4] as
//     q = code + 1, code in {-1, 0, 1, 2}; its value is code * d. 2.25 bits per weight.
//   Q1_0 (18 bytes per 128 weights): d, qs[16]. Weight j is bit j % 8 of qs[j / 8]; its value is
//     +d when the bit is 1, -d when it is 0 (code +1 / -1). 1.125 bits per weight.
//
// Reading also accepts the float and block-quantized types of published models (BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; checkpoints/gguf_quants.hpp) and refuses any other type by
// its ggml name. load() maps the file: its tensors view the mapping instead of copying the data.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/fs.hpp"

namespace bitqat::checkpoints::gguf {

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;

constexpr int kQK = 256;  // weights per ternary block (ggml's QK_K)
constexpr int kTQ2_0Bytes = kQK / 4 + 2;
constexpr int kTQ1_0Bytes = (kQK - 16) / 5 + 16 / 4 + 2;
static_assert(kTQ2_0Bytes == 66, "TQ2_0: 64 bytes of 2-bit codes + fp16 scale");
static_assert(kTQ1_0Bytes == 54, "TQ1_0: 48 bytes of 5 trits + 4 bytes of 4 trits + fp16 scale");
static_assert((kQK - 16) % 5 == 0 && 160 % 32 == 0 && 80 % 16 == 0, "TQ1_0 trit groups tile the block");

constexpr int kQK2_0 = 64;   // weights per Q2_0 block (ggml's QK2_0)
constexpr int kQK1_0 = 128;  // weights per Q1_0 block (ggml's QK1_0)
constexpr int kQ2_0Bytes = 2 + kQK2_0 / 4;
constexpr int kQ1_0Bytes = 2 + kQK1_0 / 8;
static_assert(kQ2_0Bytes == 18, "Q2_0: fp16 scale + 16 bytes of 2-bit codes (sizeof(block_q2_0))");
static_assert(kQ1_0Bytes == 18, "Q1_0: fp16 scale + 16 bytes of sign bits (sizeof(block_q1_0))");

// ggml tensor types used here (the numbers are ggml's enum ggml_type).
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kTQ1_0 = 34, kTQ2_0 = 35, kQ1_0 = 41, kQ2_0 = 42 };
// Types that are only read (gguf_quants.hpp), never written by bitqat.
constexpr GgmlType kQ4_0{2}, kQ4_1{3}, kQ5_0{6}, kQ5_1{7}, kQ8_0{8}, kQ4_K{12}, kQ5_K{13}, kQ6_K{14}, kBF16{30};
const char* to_string(GgmlType t);
// Weights per block (1 for the float types) and bytes per block.
int64_t block_size(GgmlType t);
int64_t block_bytes(GgmlType t);
bool is_block_type(GgmlType t);  // TQ1_0, TQ2_0, Q2_0, Q1_0
// The codes a block type stores: {-1, 0, 1} (TQ), {-1, 0, 1, 2} (Q2_0), {-1, 1} (Q1_0).
std::pair<int, int> code_range(GgmlType t);
// Bytes of one row of n weights; throws std::invalid_argument when n is not a whole number of blocks.
int64_t row_bytes(GgmlType t, int64_t n);

// Metadata value types (gguf_type).
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value: `data` holds the number, bool or string, or a JSON array of them (`elem`
// is then their type).
struct Value {
  ValueType type = ValueType::kUint32;
  ValueType elem = ValueType::kUint32;
  nlohmann::json data;

  static Value u32(uint32_t v) { return {ValueType::kUint32, ValueType::kUint32, v}; }
  static Value i32(int32_t v) { return {ValueType::kInt32, ValueType::kInt32, v}; }
  static Value f32(float v) { return {ValueType::kFloat32, ValueType::kFloat32, v}; }
  static Value boolean(bool v) { return {ValueType::kBool, ValueType::kBool, v}; }
  static Value str(const std::string& v) { return {ValueType::kString, ValueType::kString, v}; }
  static Value array(ValueType elem, nlohmann::json values) { return {ValueType::kArray, elem, std::move(values)}; }
};

struct Tensor {
  std::string name;
  std::vector<int64_t> ne;  // dims, innermost (contiguous) first, as GGUF stores them
  GgmlType type = GgmlType::kF32;
  std::string data;  // raw bytes: rows of row_bytes(type, ne[0]) (tensors built or decoded in memory)
  // Tensors of a loaded file view it instead: `size` bytes at `offset` of `mapping`.
  std::shared_ptr<const core::MappedFile> mapping{};
  uint64_t offset = 0, size = 0;
  // The raw bytes, wherever they are.
  std::string_view bytes() const;
  // Drops a mapped tensor's pages from the resident set (after its values were copied elsewhere).
  void release() const;
};

struct File {
  std::vector<std::pair<std::string, Value>> metadata;  // in file order
  std::vector<Tensor> tensors;                          // in file order
  const Value* find(const std::string& key) const;
  const Tensor* tensor(const std::string& name) const;
};

// The file's bytes; the alignment is general.alignment when present (a uint32 power of two).
std::string encode(const File& f);
void save(const std::string& path, const File& f);  // atomic
// Refuses malformed files (magic, version, truncation, types, sizes, offsets) with a UserError
// naming `origin`.
File decode(const std::string& bytes, const std::string& origin);
// The same checks on a mapped file; the tensors view the mapping.
File decode(std::shared_ptr<const core::MappedFile> file, const std::string& origin);
File load(const std::string& path);
// Only the metadata of a file (tensor infos and data are not read, so tensors of any type are
// accepted): what an export needs from a source model's GGUF, e.g. its tokenizer.* keys. Refuses a
// malformed header like decode().
std::vector<std::pair<std::string, Value>> decode_metadata(const std::string& bytes, const std::string& origin);
std::vector<std::pair<std::string, Value>> load_metadata(const std::string& path);

// Reference block codecs: 256 int8 codes in {-1, 0, 1} and the scale d (stored as fp16).
void encode_tq2_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq2_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_tq1_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq1_0_block(const uint8_t* in, int8_t* codes, float* d);
// Q2_0: 64 codes in {-1, 0, 1, 2}; Q1_0: 128 codes in {-1, 1}. std::invalid_argument on other codes.
void encode_q2_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_q2_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_q1_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_q1_0_block(const uint8_t* in, int8_t* codes, float* d);

// A block-quantized tensor: codes int8 [rows, K] (in code_range(type)) and per-block scales float
// [rows, K / block_size(type)] -> a tensor of `type` named `name` (ne = {K, rows}). K must be a
// multiple of the block size; every scale must fit an fp16 d (finite, |d| <= 65504). Violations
// throw std::invalid_argument naming the tensor (exports check scales first, naming the layer).
Tensor block_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& block_scales, GgmlType type);
// block_tensor restricted to TQ1_0 / TQ2_0 (kept for callers that mean ternary blocks of 256).
Tensor ternary_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& block_scales, GgmlType type);
// A float tensor (F32 or F16) of any shape; ne is the shape reversed.
Tensor float_tensor(const std::string& name, const at::Tensor& values, GgmlType type = GgmlType::kF32);
// Dequantized float32 values in torch order (ne reversed): F32, F16, every block type and every
// type of gguf_quants.hpp.
at::Tensor dequantize(const Tensor& t);
// Codes int8 [rows, K] and block scales float [rows, K / block_size] (the fp16 d's) of a block tensor.
at::Tensor block_codes(const Tensor& t);
at::Tensor block_scales(const Tensor& t);
// block_codes of a TQ tensor.
at::Tensor ternary_codes(const Tensor& t);

}  // namespace bitqat::checkpoints::gguf
