// The ggml tensor types bitqat knows, in one table of traits shaped like ggml's type_traits
// (ggml/src/ggml.c): name, block size, type size, to_float and from_float, plus the block codecs of the
// types bitqat writes from integer codes. The reader, the writer, the tensor conversions
// (gguf_tensor.hpp) and the exports look every type up here; the layouts and codecs themselves are
// gguf_quants.hpp. A new type is one row of the table (gguf_types.cpp), its enumerator below, and its
// codecs.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/gguf_quants.hpp"

namespace bitqat::checkpoints::gguf {

// The numbers are ggml's enum ggml_type (ggml.h). Other numbers may occur in a GgmlType read from a
// file only after find_type_traits accepted them.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kQ1_0 = 41,
  kQ2_0 = 42,
};

using ToFloat = void (*)(const uint8_t* in, float* out, int64_t n);      // n values of n / block_size blocks
using FromFloat = void (*)(const float* in, uint8_t* out, int64_t n);    // n values to n / block_size blocks
using FromCodes = void (*)(const int8_t* codes, float d, uint8_t* out);  // one block: block_size codes, d
using ToCodes = void (*)(const uint8_t* in, int8_t* codes, float* d);    // one block

struct TypeTraits {
  GgmlType type;
  const char* name;      // ggml's type_name ("Q4_K")
  int64_t block_size;    // elements per block (ggml's blck_size; 1 for the float types)
  int64_t type_size;     // bytes per block (ggml's type_size)
  ToFloat to_float;      // every type of the table is read
  FromFloat from_float;  // the float types bitqat writes (F32, F16); null for the others
  // The block types bitqat writes from integer codes and one fp16 scale d per block (TQ1_0, TQ2_0,
  // Q1_0, Q2_0); null for the others. The encoder throws std::invalid_argument on a code outside
  // `codes`.
  FromCodes from_codes;
  ToCodes to_codes;
  uint8_t codes;      // bit c + 1 set for each code c in [-1, 2] a block can hold (0: none)
  int32_t file_type;  // general.file_type (llama.cpp's llama_ftype) of a file mostly of this type; -1: none
};

// The table, in the order messages list the types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0, Q1_0, Q2_0.
const std::vector<TypeTraits>& type_table();
// The row of ggml type number `type`; nullptr for a type bitqat does not read.
const TypeTraits* find_type_traits(uint32_t type);
// The row of t; std::invalid_argument naming the number when there is none.
const TypeTraits& type_traits(GgmlType t);

const char* to_string(GgmlType t);  // ggml's name
// ggml's name of any type number it has or had ("Q3_K", "IQ2_XS"), else "unknown".
const char* ggml_type_name(uint32_t type);
// The table's names, "F32, F16, BF16, ...", for messages.
std::string type_names();

// Weights per block (1 for the float types) and bytes per block; std::invalid_argument for a type
// outside the table.
int64_t block_size(GgmlType t);
int64_t block_bytes(GgmlType t);
bool is_block_type(GgmlType t);  // written from codes: TQ1_0, TQ2_0, Q2_0, Q1_0
bool holds_code(GgmlType t, int code);
// The smallest and largest code a block type stores: {-1, 1} (TQ, and Q1_0, which has no 0), {-1, 2}
// (Q2_0); std::invalid_argument for a type without codes.
std::pair<int, int> code_range(GgmlType t);
// Bytes of one row of n weights; throws std::invalid_argument when n is not a whole number of blocks.
int64_t row_bytes(GgmlType t, int64_t n);

// n float32 values from the n / block_size blocks at `in`; n must be a whole number of blocks of a
// type of the table (std::invalid_argument otherwise).
void dequantize_row(uint32_t type, const uint8_t* in, float* out, int64_t n);

}  // namespace bitqat::checkpoints::gguf
