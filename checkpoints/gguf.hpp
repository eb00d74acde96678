// GGUF v3 files (ggml / llama.cpp): a writer and a reader, and the ternary block types TQ2_0 and
// TQ1_0 as plain scalar reference codecs (the ground truth; never optimised).
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

// ggml tensor types used here (the numbers are ggml's enum ggml_type).
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kTQ1_0 = 34, kTQ2_0 = 35 };
// Types that are only read (gguf_quants.hpp), never written by bitqat.
constexpr GgmlType kQ4_0{2}, kQ4_1{3}, kQ5_0{6}, kQ5_1{7}, kQ8_0{8}, kQ4_K{12}, kQ5_K{13}, kQ6_K{14}, kBF16{30};
const char* to_string(GgmlType t);
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

// Reference block codecs: 256 int8 codes in {-1, 0, 1} and the scale d (stored as fp16).
void encode_tq2_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq2_0_block(const uint8_t* in, int8_t* codes, float* d);
void encode_tq1_0_block(const int8_t* codes, float d, uint8_t* out);
void decode_tq1_0_block(const uint8_t* in, int8_t* codes, float* d);

// A ternary tensor: codes int8 [rows, K] and per-block scales float [rows, K / 256] -> a TQ tensor
// named `name` (ne = {K, rows}). K must be a multiple of 256 (std::invalid_argument otherwise).
Tensor ternary_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& block_scales, GgmlType type);
// A float tensor (F32 or F16) of any shape; ne is the shape reversed.
Tensor float_tensor(const std::string& name, const at::Tensor& values, GgmlType type = GgmlType::kF32);
// Dequantized float32 values in torch order (ne reversed): F32, F16, TQ1_0, TQ2_0 and every type of
// gguf_quants.hpp.
at::Tensor dequantize(const Tensor& t);
// Codes int8 [rows, K] of a TQ tensor.
at::Tensor ternary_codes(const Tensor& t);

}  // namespace bitqat::checkpoints::gguf
