#include "checkpoints/gguf_tensor.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace bitqat::checkpoints::gguf {
namespace {

// The row of a type written from codes, else std::invalid_argument.
const TypeTraits& code_type(GgmlType type) {
  const auto& row = type_traits(type);
  if (!row.from_codes) throw std::invalid_argument(fmt::format("gguf: {} is not a block type", row.name));
  return row;
}

// Decodes every block of a block tensor into codes [rows, K] and scales [rows, K / block size].
std::pair<at::Tensor, at::Tensor> decode_blocks(const Tensor& t) {
  const auto& row = code_type(t.type);
  const int64_t k = t.ne[0], bs = row.block_size, bb = row.type_size;
  const auto raw = t.bytes();
  const int64_t rows = static_cast<int64_t>(raw.size()) / row_bytes(t.type, k);
  auto codes = at::empty({rows, k}, at::kChar);
  auto scales = at::empty({rows, k / bs}, at::kFloat);
  const auto* in = reinterpret_cast<const uint8_t*>(raw.data());
  auto* c = codes.data_ptr<int8_t>();
  auto* s = scales.data_ptr<float>();
  for (int64_t b = 0; b < rows * (k / bs); ++b) row.to_codes(in + b * bb, c + b * bs, s + b);
  return {codes, scales};
}

// Codes -1, 0, 1 and no other: TQ1_0, TQ2_0.
bool is_ternary(GgmlType t) {
  return is_block_type(t) && holds_code(t, -1) && holds_code(t, 0) && holds_code(t, 1) && !holds_code(t, 2);
}

}  // namespace

std::string_view Tensor::bytes() const {
  if (!mapping) return data;
  return mapping->view().substr(offset, size);
}

void Tensor::release() const {
  if (mapping) mapping->release(mapping->data() + offset, size);
}

void check_size(const Tensor& t) {
  int64_t rows = 1;
  for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
  if (t.ne.empty() || static_cast<int64_t>(t.bytes().size()) != rows * row_bytes(t.type, t.ne[0])) {
    throw std::invalid_argument(fmt::format("gguf: tensor {} holds {} bytes, its {} shape needs another size", t.name,
                                            t.bytes().size(), to_string(t.type)));
  }
}

Tensor block_tensor(const std::string& name, const at::Tensor& codes_in, const at::Tensor& scales_in, GgmlType type) {
  const auto& row = code_type(type);
  if (codes_in.dim() != 2 || codes_in.scalar_type() != at::kChar) {
    throw std::invalid_argument(fmt::format("gguf: tensor {}: expected int8 codes [rows, K]", name));
  }
  const int64_t rows = codes_in.size(0), k = codes_in.size(1), bs = row.block_size, bb = row.type_size;
  if (k % bs != 0) {
    throw std::invalid_argument(fmt::format(
        "gguf: tensor {}: K = {} is not a multiple of {} ({} blocks run along rows)", name, k, bs, row.name));
  }
  const int64_t blocks = k / bs;
  const auto codes = codes_in.cpu().contiguous();
  const auto scales = scales_in.detach().cpu().to(at::kFloat).contiguous();
  if (scales.numel() != rows * blocks) {
    throw std::invalid_argument(
        fmt::format("gguf: tensor {}: {} block scales for {} x {} blocks", name, scales.numel(), rows, blocks));
  }
  Tensor t{name, {k, rows}, type, std::string(static_cast<size_t>(rows * row_bytes(type, k)), '\0')};
  auto* out = reinterpret_cast<uint8_t*>(t.data.data());
  const auto* c = codes.data_ptr<int8_t>();
  const auto* s = scales.data_ptr<float>();
  for (int64_t b = 0; b < rows * blocks; ++b) {
    // fp16's largest finite value; beyond it the narrowing would store infinity.
    if (!std::isfinite(s[b]) || std::fabs(s[b]) > 65504.0f) {
      throw std::invalid_argument(fmt::format("gguf: tensor {}: block scale {} (block {}) does not fit an fp16 d", name,
                                              static_cast<double>(s[b]), b));
    }
    row.from_codes(c + b * bs, s[b], out + b * bb);
  }
  return t;
}

Tensor ternary_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& scales, GgmlType type) {
  if (!is_ternary(type)) throw std::invalid_argument(fmt::format("gguf: {} is not a ternary type", to_string(type)));
  return block_tensor(name, codes, scales, type);
}

Tensor float_tensor(const std::string& name, const at::Tensor& values, GgmlType type) {
  const auto& row = type_traits(type);
  if (!row.from_float) throw std::invalid_argument(fmt::format("gguf: {} is not a float type", row.name));
  const auto v = values.detach().cpu().to(at::kFloat).contiguous();
  Tensor t{name, {}, type, std::string(static_cast<size_t>(row_bytes(type, v.numel())), '\0')};
  for (int64_t d = v.dim() - 1; d >= 0; --d) t.ne.push_back(v.size(d));
  if (t.ne.empty()) t.ne.push_back(1);
  row.from_float(v.data_ptr<float>(), reinterpret_cast<uint8_t*>(t.data.data()), v.numel());
  return t;
}

at::Tensor block_codes(const Tensor& t) { return decode_blocks(t).first; }
at::Tensor block_scales(const Tensor& t) { return decode_blocks(t).second; }

at::Tensor ternary_codes(const Tensor& t) {
  if (!is_ternary(t.type)) {
    throw std::invalid_argument(fmt::format("gguf: tensor {} is {}, not ternary", t.name, to_string(t.type)));
  }
  return block_codes(t);
}

at::Tensor dequantize(const Tensor& t) {
  const std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
  check_size(t);
  const auto raw = t.bytes();
  // One float32 tensor straight from the bytes (F32 included: a copy, never a view of the file).
  auto v = at::empty(shape, at::kFloat);
  dequantize_row(static_cast<uint32_t>(t.type), reinterpret_cast<const uint8_t*>(raw.data()), v.data_ptr<float>(),
                 v.numel());
  return v;
}

}  // namespace bitqat::checkpoints::gguf
