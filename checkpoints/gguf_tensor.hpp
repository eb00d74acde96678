// A GGUF tensor (its info and raw bytes) and its conversions to and from ATen tensors: float tensors,
// block tensors from integer codes and per-block scales, and float32 values of every type of the
// table (gguf_types.hpp). The file that holds tensors is gguf.hpp.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoints/gguf_types.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints::gguf {

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

// Throws std::invalid_argument naming the tensor when its bytes are not the whole rows of
// row_bytes(type, ne[0]) its shape needs.
void check_size(const Tensor& t);

// A block-quantized tensor: codes int8 [rows, K] (in code_range(type)) and per-block scales float
// [rows, K / block_size(type)] -> a tensor of `type` named `name` (ne = {K, rows}). K must be a
// multiple of the block size; every scale must fit an fp16 d (finite, |d| <= 65504). Violations
// throw std::invalid_argument naming the tensor (exports check scales first, naming the layer).
Tensor block_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& block_scales, GgmlType type);
// block_tensor restricted to TQ1_0 / TQ2_0 (kept for callers that mean ternary blocks of 256).
Tensor ternary_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& block_scales, GgmlType type);
// A float tensor (F32 or F16) of any shape, from its values taken as float32; ne is the shape reversed.
Tensor float_tensor(const std::string& name, const at::Tensor& values, GgmlType type = GgmlType::kF32);
// Dequantized float32 values in torch order (ne reversed), for every type of the table.
at::Tensor dequantize(const Tensor& t);
// Codes int8 [rows, K] and block scales float [rows, K / block_size] (the fp16 d's) of a block tensor.
at::Tensor block_codes(const Tensor& t);
at::Tensor block_scales(const Tensor& t);
// block_codes of a TQ tensor.
at::Tensor ternary_codes(const Tensor& t);

}  // namespace bitqat::checkpoints::gguf
