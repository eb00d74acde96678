// The safetensors format: 8-byte little-endian header length N, a JSON header of N bytes
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then raw
// little-endian tensor data (offsets relative to the first byte after the header).
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bitqat::checkpoints {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The serialized bytes (tensors are copied to contiguous CPU memory, in the given order).
std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});
// Written atomically (temporary file, fsync, rename).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  NamedTensors tensors;  // in file order of their data
  std::map<std::string, std::string> metadata;
  std::map<std::string, at::Tensor> by_name() const;
};
// Refuses malformed files with a UserError naming `origin` and what is wrong.
SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& origin);
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace bitqat::checkpoints
