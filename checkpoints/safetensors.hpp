// The safetensors format: 8-byte little-endian header length N, a JSON header of N bytes
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then raw
// little-endian tensor data (offsets relative to the first byte after the header).
//
// Memory: saving streams one tensor at a time to the file (a tensor on another device is copied to
// the host alone, never the whole set); loading maps the file, and the tensors are views of the
// mapping (copy-on-write), so that reading a file costs no copy of its data.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/fs.hpp"

namespace bitqat::checkpoints {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The serialized bytes (tensors are copied to contiguous CPU memory, in the given order).
std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});
// The same bytes streamed into `out`, one tensor at a time (tensors on any device).
void write_safetensors(core::FileWriter& out, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// Written atomically (temporary file, fsync, rename), streamed.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  NamedTensors tensors;  // in file order of their data
  std::map<std::string, std::string> metadata;
  // The mapped file the tensors view (null for decode_safetensors of bytes in memory).
  std::shared_ptr<const core::MappedFile> mapping;
  std::map<std::string, at::Tensor> by_name() const;
  // Drops the pages of `t` from the resident set when it views the mapping (after it was copied
  // elsewhere; reading it again fetches them from the file).
  void release(const at::Tensor& t) const;
};
// Refuses malformed files with a UserError naming `origin` and what is wrong. The tensors are
// copies of the bytes.
SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& origin);
// The same checks on a mapped file; the tensors view the mapping (a tensor whose data is not
// aligned to its element size is copied instead).
SafetensorsFile decode_safetensors(std::shared_ptr<const core::MappedFile> file, const std::string& origin);
// Maps `path` (see decode_safetensors of a mapped file).
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace bitqat::checkpoints
