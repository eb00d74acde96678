#include "checkpoints/gguf.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints::gguf {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};

// --- writing -------------------------------------------------------------------------------------

template <typename T>
void put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the hosts we build for are little-endian, as GGUF is
  out->append(b, sizeof(T));
}

void put_string(std::string* out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out->append(s);
}

void put_scalar(std::string* out, ValueType t, const nlohmann::json& v, const std::string& key) {
  switch (t) {
    case ValueType::kUint8:
      return put<uint8_t>(out, v.get<uint8_t>());
    case ValueType::kInt8:
      return put<int8_t>(out, v.get<int8_t>());
    case ValueType::kUint16:
      return put<uint16_t>(out, v.get<uint16_t>());
    case ValueType::kInt16:
      return put<int16_t>(out, v.get<int16_t>());
    case ValueType::kUint32:
      return put<uint32_t>(out, v.get<uint32_t>());
    case ValueType::kInt32:
      return put<int32_t>(out, v.get<int32_t>());
    case ValueType::kFloat32:
      return put<float>(out, v.get<float>());
    case ValueType::kBool:
      return put<uint8_t>(out, v.get<bool>() ? 1 : 0);
    case ValueType::kString:
      return put_string(out, v.get<std::string>());
    case ValueType::kUint64:
      return put<uint64_t>(out, v.get<uint64_t>());
    case ValueType::kInt64:
      return put<int64_t>(out, v.get<int64_t>());
    case ValueType::kFloat64:
      return put<double>(out, v.get<double>());
    case ValueType::kArray:
      break;
  }
  throw std::invalid_argument(fmt::format("gguf: metadata {}: nested arrays are not supported", key));
}

void pad_to(std::string* out, uint64_t alignment) {
  out->append((alignment - out->size() % alignment) % alignment, '\0');
}

// --- reading -------------------------------------------------------------------------------------

class Cursor {
 public:
  Cursor(std::string_view bytes, const std::string& origin) : b_(bytes), origin_(origin) {}
  core::UserError bad(const std::string& what) const {
    return core::UserError(fmt::format("{}: not a valid GGUF file: {} (at byte {})", origin_, what, pos_));
  }
  template <typename T>
  T get(const char* what) {
    if (b_.size() - pos_ < sizeof(T)) throw bad(fmt::format("truncated while reading {}", what));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string get_string(const char* what) {
    const auto n = get<uint64_t>(what);
    if (n > b_.size() - pos_)
      throw bad(fmt::format("{} of {} bytes runs past the end of the file (truncated?)", what, n));
    std::string s(b_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  std::string_view b_;
  const std::string& origin_;
  size_t pos_ = 0;
};

nlohmann::json get_scalar(Cursor* c, ValueType t, const std::string& key) {
  switch (t) {
    case ValueType::kUint8:
      return c->get<uint8_t>("a uint8");
    case ValueType::kInt8:
      return c->get<int8_t>("an int8");
    case ValueType::kUint16:
      return c->get<uint16_t>("a uint16");
    case ValueType::kInt16:
      return c->get<int16_t>("an int16");
    case ValueType::kUint32:
      return c->get<uint32_t>("a uint32");
    case ValueType::kInt32:
      return c->get<int32_t>("an int32");
    case ValueType::kFloat32:
      return c->get<float>("a float32");
    case ValueType::kBool: {
      const auto v = c->get<uint8_t>("a bool");
      if (v > 1) throw c->bad(fmt::format("metadata {}: bool value {}", key, v));
      return v == 1;
    }
    case ValueType::kString:
      return c->get_string("a string");
    case ValueType::kUint64:
      return c->get<uint64_t>("a uint64");
    case ValueType::kInt64:
      return c->get<int64_t>("an int64");
    case ValueType::kFloat64:
      return c->get<double>("a float64");
    case ValueType::kArray:
      break;
  }
  throw c->bad(fmt::format("metadata {}: value type {} is not a scalar type", key, static_cast<uint32_t>(t)));
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kFloat64); }

File decode_view(std::string_view bytes, const std::string& origin,
                 const std::shared_ptr<const core::MappedFile>& mapping) {
  Cursor c(bytes, origin);
  if (bytes.size() < 4 || std::memcmp(bytes.data(), kMagic, 4) != 0) throw c.bad("the magic is not GGUF");
  c.get<uint32_t>("the magic");
  const auto version = c.get<uint32_t>("the version");
  if (version != kVersion) throw c.bad(fmt::format("version {}, this reader knows version {}", version, kVersion));
  const auto n_tensors = c.get<uint64_t>("the tensor count");
  const auto n_kv = c.get<uint64_t>("the metadata count");
  if (n_tensors > bytes.size() || n_kv > bytes.size()) throw c.bad("tensor or metadata count larger than the file");
  File f;
  uint64_t alignment = kDefaultAlignment;
  for (uint64_t i = 0; i < n_kv; ++i) {
    const auto key = c.get_string("a metadata key");
    const auto type = c.get<uint32_t>("a value type");
    if (!known_value_type(type)) throw c.bad(fmt::format("metadata {}: unknown value type {}", key, type));
    Value v;
    v.type = static_cast<ValueType>(type);
    if (v.type == ValueType::kArray) {
      const auto elem = c.get<uint32_t>("an array type");
      if (!known_value_type(elem) || elem == static_cast<uint32_t>(ValueType::kArray)) {
        throw c.bad(fmt::format("metadata {}: unsupported array element type {}", key, elem));
      }
      v.elem = static_cast<ValueType>(elem);
      const auto n = c.get<uint64_t>("an array length");
      if (n > bytes.size()) throw c.bad(fmt::format("metadata {}: array length {} larger than the file", key, n));
      v.data = nlohmann::json::array();
      for (uint64_t j = 0; j < n; ++j) v.data.push_back(get_scalar(&c, v.elem, key));
    } else {
      v.elem = v.type;
      v.data = get_scalar(&c, v.type, key);
    }
    if (key == "general.alignment") {
      if (v.type != ValueType::kUint32) throw c.bad("general.alignment is not a uint32");
      alignment = v.data.get<uint64_t>();
      if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        throw c.bad(fmt::format("general.alignment = {} is not a power of two", alignment));
      }
    }
    f.metadata.emplace_back(key, std::move(v));
  }
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Tensor t;
    t.name = c.get_string("a tensor name");
    const auto n_dims = c.get<uint32_t>("a dimension count");
    if (n_dims < 1 || n_dims > 4) throw c.bad(fmt::format("tensor {}: {} dimensions (1 to 4 allowed)", t.name, n_dims));
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto n = c.get<uint64_t>("a dimension");
      if (n == 0 || n > bytes.size() * 8) throw c.bad(fmt::format("tensor {}: dimension {} = {}", t.name, d, n));
      t.ne.push_back(static_cast<int64_t>(n));
    }
    const auto type = c.get<uint32_t>("a tensor type");
    if (!find_type_traits(type)) {
      throw c.bad(fmt::format("tensor {}: ggml type {} ({}) is not supported (bitqat reads {})", t.name,
                              ggml_type_name(type), type, type_names()));
    }
    t.type = static_cast<GgmlType>(type);
    const auto off = c.get<uint64_t>("a tensor offset");
    if (off % alignment != 0)
      throw c.bad(fmt::format("tensor {}: offset {} is not aligned to {}", t.name, off, alignment));
    offsets.push_back(off);
    f.tensors.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    auto& t = f.tensors[i];
    // The product of the dimensions may overflow 64 bits: compare it with the file in 128.
    unsigned __int128 rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= static_cast<unsigned __int128>(t.ne[d]);
    unsigned __int128 wide = 0;
    try {
      wide = rows * static_cast<unsigned __int128>(row_bytes(t.type, t.ne[0]));
    } catch (const std::invalid_argument& e) {
      throw c.bad(fmt::format("tensor {}: {}", t.name, e.what()));
    }
    if (wide > bytes.size()) {
      throw c.bad(fmt::format("tensor {}: dimensions [{}] need more bytes than the whole {}-byte file", t.name,
                              fmt::join(t.ne, ", "), bytes.size()));
    }
    const auto size = static_cast<int64_t>(wide);
    const uint64_t begin = data_start + offsets[i];
    if (begin > bytes.size() || static_cast<uint64_t>(size) > bytes.size() - begin) {
      throw c.bad(fmt::format("tensor {}: its {} bytes at offset {} run past the end of the file (truncated?)", t.name,
                              size, offsets[i]));
    }
    if (mapping) {
      t.mapping = mapping;
      t.offset = begin;
      t.size = static_cast<uint64_t>(size);
    } else {
      t.data = std::string(bytes.substr(begin, static_cast<size_t>(size)));
    }
  }
  return f;
}

}  // namespace

const Value* File::find(const std::string& key) const {
  for (const auto& [k, v] : metadata) {
    if (k == key) return &v;
  }
  return nullptr;
}

const Tensor* File::tensor(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string encode(const File& f) {
  uint64_t alignment = kDefaultAlignment;
  if (const auto* a = f.find("general.alignment")) {
    alignment = a->data.get<uint64_t>();
    if (a->type != ValueType::kUint32 || alignment == 0 || (alignment & (alignment - 1)) != 0) {
      throw std::invalid_argument("gguf: general.alignment must be a uint32 power of two");
    }
  }
  std::string out(kMagic, 4);
  put<uint32_t>(&out, kVersion);
  put<uint64_t>(&out, f.tensors.size());
  put<uint64_t>(&out, f.metadata.size());
  for (const auto& [key, v] : f.metadata) {
    put_string(&out, key);
    put<uint32_t>(&out, static_cast<uint32_t>(v.type));
    if (v.type == ValueType::kArray) {
      if (!v.data.is_array()) throw std::invalid_argument(fmt::format("gguf: metadata {} is not an array", key));
      put<uint32_t>(&out, static_cast<uint32_t>(v.elem));
      put<uint64_t>(&out, v.data.size());
      for (const auto& e : v.data) put_scalar(&out, v.elem, e, key);
    } else {
      put_scalar(&out, v.type, v.data, key);
    }
  }
  uint64_t offset = 0;
  for (const auto& t : f.tensors) {
    check_size(t);
    put_string(&out, t.name);
    put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
    for (auto d : t.ne) put<uint64_t>(&out, static_cast<uint64_t>(d));
    put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    put<uint64_t>(&out, offset);
    offset += (t.bytes().size() + alignment - 1) / alignment * alignment;
  }
  pad_to(&out, alignment);
  for (const auto& t : f.tensors) {
    out.append(t.bytes());
    pad_to(&out, alignment);
  }
  return out;
}

void save(const std::string& path, const File& f) { core::write_file_atomic(path, encode(f)); }

File decode(const std::string& bytes, const std::string& origin) { return decode_view(bytes, origin, nullptr); }

File decode(std::shared_ptr<const core::MappedFile> file, const std::string& origin) {
  return decode_view(file->view(), origin, file);
}

File load(const std::string& path) { return decode(core::MappedFile::open(path), path); }

// A separate walk over the header rather than a mode of decode(): tensor infos and data are not
// looked at, so a source model whose tensors use types this reader does not decode still yields
// its metadata.
std::vector<std::pair<std::string, Value>> decode_metadata(const std::string& bytes, const std::string& origin) {
  Cursor c(bytes, origin);
  if (bytes.size() < 4 || std::memcmp(bytes.data(), kMagic, 4) != 0) throw c.bad("the magic is not GGUF");
  c.get<uint32_t>("the magic");
  const auto version = c.get<uint32_t>("the version");
  if (version != kVersion) throw c.bad(fmt::format("version {}, this reader knows version {}", version, kVersion));
  c.get<uint64_t>("the tensor count");
  const auto n_kv = c.get<uint64_t>("the metadata count");
  if (n_kv > bytes.size()) throw c.bad("metadata count larger than the file");
  std::vector<std::pair<std::string, Value>> out;
  for (uint64_t i = 0; i < n_kv; ++i) {
    auto key = c.get_string("a metadata key");
    const auto type = c.get<uint32_t>("a value type");
    if (!known_value_type(type)) throw c.bad(fmt::format("metadata {}: unknown value type {}", key, type));
    Value v;
    v.type = v.elem = static_cast<ValueType>(type);
    if (v.type == ValueType::kArray) {
      const auto elem = c.get<uint32_t>("an array type");
      if (!known_value_type(elem) || elem == static_cast<uint32_t>(ValueType::kArray)) {
        throw c.bad(fmt::format("metadata {}: unsupported array element type {}", key, elem));
      }
      v.elem = static_cast<ValueType>(elem);
      const auto n = c.get<uint64_t>("an array length");
      if (n > bytes.size()) throw c.bad(fmt::format("metadata {}: array length {} larger than the file", key, n));
      v.data = nlohmann::json::array();
      for (uint64_t j = 0; j < n; ++j) v.data.push_back(get_scalar(&c, v.elem, key));
    } else {
      v.data = get_scalar(&c, v.type, key);
    }
    out.emplace_back(std::move(key), std::move(v));
  }
  return out;
}

std::vector<std::pair<std::string, Value>> load_metadata(const std::string& path) {
  return decode_metadata(core::read_file(path), path);
}

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
