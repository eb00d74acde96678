// GGUF v3 files (ggml / llama.cpp): the container, a writer and a reader. The tensor types and their
// codecs are gguf_types.hpp / gguf_quants.hpp, GGUF tensors and their conversions gguf_tensor.hpp
// (both come with this header).
//
// File: "GGUF", uint32 version 3, uint64 tensor count, uint64 metadata count, the metadata
// (string key, uint32 value type, value), the tensor infos (string name, uint32 n_dims, uint64
// dims innermost first, uint32 ggml type, uint64 offset into the data), zero padding to the
// alignment (general.alignment, default 32), then the data, each tensor starting at a multiple of
// the alignment. Strings are uint64 length + bytes; everything is little-endian.
//
// Reading accepts every type of the table (gguf_types.hpp) and refuses any other type by its ggml
// name. load() maps the file: its tensors view the mapping instead of copying the data.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/gguf_tensor.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints::gguf {

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;

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

}  // namespace bitqat::checkpoints::gguf
