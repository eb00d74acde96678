#include "checkpoints/gguf_types.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace bitqat::checkpoints::gguf {
namespace {

constexpr uint8_t kTernary = 0b0111;       // codes -1, 0, 1
constexpr uint8_t kTernaryPlus2 = 0b1111;  // codes -1, 0, 1, 2
constexpr uint8_t kSigns = 0b0101;         // codes -1, 1

}  // namespace

// Block and type sizes come from the block structs; names, sizes and file types (llama.h's
// LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_*) are checked against gguf-py and ggml's own type traits
// by tests/checkpoints/gguf_types_test.cpp.
const std::vector<TypeTraits>& type_table() {
  static const std::vector<TypeTraits> table = {
      // type, name, block size, type size, to_float, from_float, from_codes, to_codes, codes, file type
      {GgmlType::kF32, "F32", 1, sizeof(float), dequantize_row_f32, quantize_row_f32, nullptr, nullptr, 0, 0},
      {GgmlType::kF16, "F16", 1, sizeof(Half), dequantize_row_f16, quantize_row_f16, nullptr, nullptr, 0, 1},
      {GgmlType::kBF16, "BF16", 1, sizeof(uint16_t), dequantize_row_bf16, nullptr, nullptr, nullptr, 0, 32},
      {GgmlType::kQ4_0, "Q4_0", kQK4_0, sizeof(BlockQ4_0), dequantize_row_q4_0, nullptr, nullptr, nullptr, 0, 2},
      {GgmlType::kQ4_1, "Q4_1", kQK4_1, sizeof(BlockQ4_1), dequantize_row_q4_1, nullptr, nullptr, nullptr, 0, 3},
      {GgmlType::kQ5_0, "Q5_0", kQK5_0, sizeof(BlockQ5_0), dequantize_row_q5_0, nullptr, nullptr, nullptr, 0, 8},
      {GgmlType::kQ5_1, "Q5_1", kQK5_1, sizeof(BlockQ5_1), dequantize_row_q5_1, nullptr, nullptr, nullptr, 0, 9},
      {GgmlType::kQ8_0, "Q8_0", kQK8_0, sizeof(BlockQ8_0), dequantize_row_q8_0, nullptr, nullptr, nullptr, 0, 7},
      {GgmlType::kQ4_K, "Q4_K", kQK, sizeof(BlockQ4_K), dequantize_row_q4_k, nullptr, nullptr, nullptr, 0, -1},
      {GgmlType::kQ5_K, "Q5_K", kQK, sizeof(BlockQ5_K), dequantize_row_q5_k, nullptr, nullptr, nullptr, 0, -1},
      {GgmlType::kQ6_K, "Q6_K", kQK, sizeof(BlockQ6_K), dequantize_row_q6_k, nullptr, nullptr, nullptr, 0, 18},
      {GgmlType::kTQ1_0, "TQ1_0", kQK, sizeof(BlockTQ1_0), dequantize_row_tq1_0, nullptr, encode_tq1_0_block,
       decode_tq1_0_block, kTernary, 36},
      {GgmlType::kTQ2_0, "TQ2_0", kQK, sizeof(BlockTQ2_0), dequantize_row_tq2_0, nullptr, encode_tq2_0_block,
       decode_tq2_0_block, kTernary, 37},
      {GgmlType::kQ1_0, "Q1_0", kQK1_0, sizeof(BlockQ1_0), dequantize_row_q1_0, nullptr, encode_q1_0_block,
       decode_q1_0_block, kSigns, 40},
      {GgmlType::kQ2_0, "Q2_0", kQK2_0, sizeof(BlockQ2_0), dequantize_row_q2_0, nullptr, encode_q2_0_block,
       decode_q2_0_block, kTernaryPlus2, 41},
  };
  return table;
}

namespace {

// The names of ggml's other types (enum ggml_type, ggml.h), for messages about files that hold them;
// 4, 5 (Q4_2, Q4_3), 31-33 and 36-38 (the repacked Q4_0 / IQ4_NL) were removed from ggml.
struct OtherType {
  uint32_t type;
  const char* name;
};
constexpr OtherType kOtherTypes[] = {
    {4, "Q4_2"},        {5, "Q4_3"},        {9, "Q8_1"},      {10, "Q2_K"},     {11, "Q3_K"},     {15, "Q8_K"},
    {16, "IQ2_XXS"},    {17, "IQ2_XS"},     {18, "IQ3_XXS"},  {19, "IQ1_S"},    {20, "IQ4_NL"},   {21, "IQ3_S"},
    {22, "IQ2_S"},      {23, "IQ4_XS"},     {24, "I8"},       {25, "I16"},      {26, "I32"},      {27, "I64"},
    {28, "F64"},        {29, "IQ1_M"},      {31, "Q4_0_4_4"}, {32, "Q4_0_4_8"}, {33, "Q4_0_8_8"}, {36, "IQ4_NL_4_4"},
    {37, "IQ4_NL_4_8"}, {38, "IQ4_NL_8_8"}, {39, "MXFP4"},    {40, "NVFP4"},
};

}  // namespace

const TypeTraits* find_type_traits(uint32_t type) {
  for (const auto& t : type_table()) {
    if (static_cast<uint32_t>(t.type) == type) return &t;
  }
  return nullptr;
}

const TypeTraits& type_traits(GgmlType t) {
  if (const auto* row = find_type_traits(static_cast<uint32_t>(t))) return *row;
  throw std::invalid_argument(fmt::format("gguf: unknown tensor type {}", static_cast<uint32_t>(t)));
}

const char* ggml_type_name(uint32_t type) {
  if (const auto* row = find_type_traits(type)) return row->name;
  for (const auto& o : kOtherTypes) {
    if (o.type == type) return o.name;
  }
  return "unknown";
}

const char* to_string(GgmlType t) { return ggml_type_name(static_cast<uint32_t>(t)); }

std::string type_names() {
  std::string out;
  for (const auto& t : type_table()) out += (out.empty() ? "" : ", ") + std::string(t.name);
  return out;
}

int64_t block_size(GgmlType t) { return type_traits(t).block_size; }
int64_t block_bytes(GgmlType t) { return type_traits(t).type_size; }

bool is_block_type(GgmlType t) {
  const auto* row = find_type_traits(static_cast<uint32_t>(t));
  return row && row->from_codes;
}

bool holds_code(GgmlType t, int code) {
  return code >= -1 && code <= 2 && ((type_traits(t).codes >> (code + 1)) & 1) != 0;
}

std::pair<int, int> code_range(GgmlType t) {
  const auto& row = type_traits(t);
  if (row.codes == 0) throw std::invalid_argument(fmt::format("gguf: {} has no codes", row.name));
  int lo = 2, hi = -1;
  for (int c = -1; c <= 2; ++c) {
    if (holds_code(t, c)) {
      lo = std::min(lo, c);
      hi = std::max(hi, c);
    }
  }
  return {lo, hi};
}

int64_t row_bytes(GgmlType t, int64_t n) {
  const auto& row = type_traits(t);
  if (n % row.block_size != 0) {
    throw std::invalid_argument(
        fmt::format("gguf: {} rows hold whole blocks of {} weights; a row of {} is not", row.name, row.block_size, n));
  }
  return n / row.block_size * row.type_size;
}

void dequantize_row(uint32_t type, const uint8_t* in, float* out, int64_t n) {
  const auto* t = find_type_traits(type);
  if (!t || n % t->block_size != 0) {
    throw std::invalid_argument(
        fmt::format("gguf: cannot dequantize {} values of type {} ({})", n, ggml_type_name(type), type));
  }
  t->to_float(in, out, n);
}

}  // namespace bitqat::checkpoints::gguf
