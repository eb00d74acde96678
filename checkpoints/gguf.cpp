#include "checkpoints/gguf.hpp"

#include <c10/util/Half.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "checkpoints/gguf_quants.hpp"
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

bool known_tensor_type(uint32_t t) {
  for (auto k :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kTQ1_0, GgmlType::kTQ2_0, GgmlType::kQ1_0, GgmlType::kQ2_0}) {
    if (static_cast<uint32_t>(k) == t) return true;
  }
  return dequant_traits(t) != nullptr;  // the types of published models, read only
}

uint8_t to_code(int8_t w) {
  if (w < -1 || w > 1) throw std::invalid_argument(fmt::format("gguf: ternary code {} is not in {{-1, 0, 1}}", w));
  return static_cast<uint8_t>(w + 1);
}

void put_half(float d, uint8_t* out) {
  const c10::Half h(d);
  std::memcpy(out, &h.x, 2);
}

float get_half(const uint8_t* in) {
  c10::Half h;
  std::memcpy(&h.x, in, 2);
  return static_cast<float>(h);
}

}  // namespace

const char* to_string(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kTQ1_0:
      return "TQ1_0";
    case GgmlType::kTQ2_0:
      return "TQ2_0";
    case GgmlType::kQ1_0:
      return "Q1_0";
    case GgmlType::kQ2_0:
      return "Q2_0";
  }
  return ggml_type_name(static_cast<uint32_t>(t));
}

int64_t block_size(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
      return 1;
    case GgmlType::kTQ1_0:
    case GgmlType::kTQ2_0:
      return kQK;
    case GgmlType::kQ1_0:
      return kQK1_0;
    case GgmlType::kQ2_0:
      return kQK2_0;
  }
  if (const auto* q = dequant_traits(static_cast<uint32_t>(t))) return q->block;
  throw std::invalid_argument(fmt::format("gguf: unknown tensor type {}", static_cast<uint32_t>(t)));
}

int64_t block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
      return 2;
    case GgmlType::kTQ1_0:
      return kTQ1_0Bytes;
    case GgmlType::kTQ2_0:
      return kTQ2_0Bytes;
    case GgmlType::kQ1_0:
      return kQ1_0Bytes;
    case GgmlType::kQ2_0:
      return kQ2_0Bytes;
  }
  if (const auto* q = dequant_traits(static_cast<uint32_t>(t))) return q->bytes;
  throw std::invalid_argument(fmt::format("gguf: unknown tensor type {}", static_cast<uint32_t>(t)));
}

bool is_block_type(GgmlType t) {
  return t == GgmlType::kTQ1_0 || t == GgmlType::kTQ2_0 || t == GgmlType::kQ1_0 || t == GgmlType::kQ2_0;
}

std::pair<int, int> code_range(GgmlType t) {
  switch (t) {
    case GgmlType::kTQ1_0:
    case GgmlType::kTQ2_0:
      return {-1, 1};
    case GgmlType::kQ2_0:
      return {-1, 2};
    case GgmlType::kQ1_0:
      return {-1, 1};
    case GgmlType::kF32:
    case GgmlType::kF16:
      break;
  }
  throw std::invalid_argument(fmt::format("gguf: {} has no codes", to_string(t)));
}

int64_t row_bytes(GgmlType t, int64_t n) {
  const int64_t b = block_size(t);
  if (n % b != 0) {
    throw std::invalid_argument(
        fmt::format("gguf: {} rows hold whole blocks of {} weights; a row of {} is not", to_string(t), b, n));
  }
  return n / b * block_bytes(t);
}

std::string_view Tensor::bytes() const {
  if (!mapping) return data;
  return mapping->view().substr(offset, size);
}

void Tensor::release() const {
  if (mapping) mapping->release(mapping->data() + offset, size);
}

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
    int64_t rows = 1;
    for (size_t i = 1; i < t.ne.size(); ++i) rows *= t.ne[i];
    if (t.ne.empty() || static_cast<int64_t>(t.bytes().size()) != rows * row_bytes(t.type, t.ne[0])) {
      throw std::invalid_argument(fmt::format("gguf: tensor {} holds {} bytes, its {} shape needs another size", t.name,
                                              t.bytes().size(), to_string(t.type)));
    }
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

namespace {

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
    if (!known_tensor_type(type)) {
      throw c.bad(fmt::format("tensor {}: ggml type {} ({}) is not supported (bitqat reads {}, TQ1_0, TQ2_0, Q1_0, Q2_0)", t.name,
                              ggml_type_name(type), type, dequant_type_names()));
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

void encode_tq2_0_block(const int8_t* codes, float d, uint8_t* out) {
  std::memset(out, 0, kTQ2_0Bytes);
  for (int i = 0; i < kQK; ++i) {
    const int h = i / 128, l = (i % 128) / 32, m = i % 32;
    out[32 * h + m] |= static_cast<uint8_t>(to_code(codes[i]) << (2 * l));
  }
  put_half(d, out + kQK / 4);
}

void decode_tq2_0_block(const uint8_t* in, int8_t* codes, float* d) {
  for (int i = 0; i < kQK; ++i) {
    const int h = i / 128, l = (i % 128) / 32, m = i % 32;
    codes[i] = static_cast<int8_t>(((in[32 * h + m] >> (2 * l)) & 3) - 1);
  }
  *d = get_half(in + kQK / 4);
}

namespace {

// ceil(v * 256 / 243): the fixed-point byte from which ((byte * 3^t mod 256) * 3) >> 8 reads trit t.
uint8_t trits_to_byte(unsigned v) { return static_cast<uint8_t>((v * 256 + 242) / 243); }

int trit_of(uint8_t byte, int t) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const uint8_t shifted = static_cast<uint8_t>(byte * kPow3[t]);  // mod 256, as uint8 arithmetic
  return (static_cast<unsigned>(shifted) * 3) >> 8;
}

}  // namespace

void encode_tq1_0_block(const int8_t* codes, float d, uint8_t* out) {
  std::memset(out, 0, kTQ1_0Bytes);
  for (int m = 0; m < 32; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 5; ++t) v = v * 3 + to_code(codes[32 * t + m]);
    out[m] = trits_to_byte(v);
  }
  for (int m = 0; m < 16; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 5; ++t) v = v * 3 + to_code(codes[160 + 16 * t + m]);
    out[32 + m] = trits_to_byte(v);
  }
  for (int m = 0; m < 4; ++m) {
    unsigned v = 0;
    for (int t = 0; t < 4; ++t) v = v * 3 + to_code(codes[240 + 4 * t + m]);
    out[48 + m] = trits_to_byte(v * 3);  // four trits in the top positions of a five-trit byte
  }
  put_half(d, out + 52);
}

void decode_tq1_0_block(const uint8_t* in, int8_t* codes, float* d) {
  for (int m = 0; m < 32; ++m) {
    for (int t = 0; t < 5; ++t) codes[32 * t + m] = static_cast<int8_t>(trit_of(in[m], t) - 1);
  }
  for (int m = 0; m < 16; ++m) {
    for (int t = 0; t < 5; ++t) codes[160 + 16 * t + m] = static_cast<int8_t>(trit_of(in[32 + m], t) - 1);
  }
  for (int m = 0; m < 4; ++m) {
    for (int t = 0; t < 4; ++t) codes[240 + 4 * t + m] = static_cast<int8_t>(trit_of(in[48 + m], t) - 1);
  }
  *d = get_half(in + 52);
}

void encode_q2_0_block(const int8_t* codes, float d, uint8_t* out) {
  put_half(d, out);
  std::memset(out + 2, 0, kQK2_0 / 4);
  for (int j = 0; j < kQK2_0; ++j) {
    if (codes[j] < -1 || codes[j] > 2) {
      throw std::invalid_argument(fmt::format("gguf: Q2_0 code {} is not in {{-1, 0, 1, 2}}", codes[j]));
    }
    out[2 + j / 4] |= static_cast<uint8_t>((codes[j] + 1) << (2 * (j % 4)));
  }
}

void decode_q2_0_block(const uint8_t* in, int8_t* codes, float* d) {
  *d = get_half(in);
  for (int j = 0; j < kQK2_0; ++j) codes[j] = static_cast<int8_t>(((in[2 + j / 4] >> (2 * (j % 4))) & 3) - 1);
}

void encode_q1_0_block(const int8_t* codes, float d, uint8_t* out) {
  put_half(d, out);
  std::memset(out + 2, 0, kQK1_0 / 8);
  for (int j = 0; j < kQK1_0; ++j) {
    if (codes[j] != -1 && codes[j] != 1) {
      throw std::invalid_argument(fmt::format("gguf: Q1_0 code {} is not -1 or +1", codes[j]));
    }
    if (codes[j] == 1) out[2 + j / 8] |= static_cast<uint8_t>(1u << (j % 8));
  }
}

void decode_q1_0_block(const uint8_t* in, int8_t* codes, float* d) {
  *d = get_half(in);
  for (int j = 0; j < kQK1_0; ++j) codes[j] = static_cast<int8_t>((in[2 + j / 8] >> (j % 8)) & 1 ? 1 : -1);
}

namespace {

using BlockEncoder = void (*)(const int8_t*, float, uint8_t*);
using BlockDecoder = void (*)(const uint8_t*, int8_t*, float*);

std::pair<BlockEncoder, BlockDecoder> block_codec(GgmlType t) {
  switch (t) {
    case GgmlType::kTQ1_0:
      return {encode_tq1_0_block, decode_tq1_0_block};
    case GgmlType::kTQ2_0:
      return {encode_tq2_0_block, decode_tq2_0_block};
    case GgmlType::kQ1_0:
      return {encode_q1_0_block, decode_q1_0_block};
    case GgmlType::kQ2_0:
      return {encode_q2_0_block, decode_q2_0_block};
    case GgmlType::kF32:
    case GgmlType::kF16:
      break;
  }
  throw std::invalid_argument(fmt::format("gguf: {} is not a block type", to_string(t)));
}

}  // namespace

Tensor block_tensor(const std::string& name, const at::Tensor& codes_in, const at::Tensor& scales_in, GgmlType type) {
  const auto encode_block = block_codec(type).first;
  if (codes_in.dim() != 2 || codes_in.scalar_type() != at::kChar) {
    throw std::invalid_argument(fmt::format("gguf: tensor {}: expected int8 codes [rows, K]", name));
  }
  const int64_t rows = codes_in.size(0), k = codes_in.size(1), bs = block_size(type), bb = block_bytes(type);
  if (k % bs != 0) {
    throw std::invalid_argument(fmt::format(
        "gguf: tensor {}: K = {} is not a multiple of {} ({} blocks run along rows)", name, k, bs, to_string(type)));
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
    encode_block(c + b * bs, s[b], out + b * bb);
  }
  return t;
}

Tensor ternary_tensor(const std::string& name, const at::Tensor& codes, const at::Tensor& scales, GgmlType type) {
  if (type != GgmlType::kTQ1_0 && type != GgmlType::kTQ2_0) {
    throw std::invalid_argument(fmt::format("gguf: {} is not a ternary type", to_string(type)));
  }
  return block_tensor(name, codes, scales, type);
}

Tensor float_tensor(const std::string& name, const at::Tensor& values, GgmlType type) {
  if (type != GgmlType::kF32 && type != GgmlType::kF16) {
    throw std::invalid_argument(fmt::format("gguf: {} is not a float type", to_string(type)));
  }
  const auto v = values.detach().cpu().to(type == GgmlType::kF32 ? at::kFloat : at::kHalf).contiguous();
  Tensor t{name, {}, type, std::string(static_cast<size_t>(v.numel() * v.element_size()), '\0')};
  for (int64_t d = v.dim() - 1; d >= 0; --d) t.ne.push_back(v.size(d));
  if (t.ne.empty()) t.ne.push_back(1);
  std::memcpy(t.data.data(), v.data_ptr(), t.data.size());
  return t;
}

namespace {

// Decodes every block of a block tensor into codes [rows, K] and scales [rows, K / block size].
std::pair<at::Tensor, at::Tensor> decode_blocks(const Tensor& t) {
  const auto decode_block = block_codec(t.type).second;
  const int64_t k = t.ne[0], bs = block_size(t.type), bb = block_bytes(t.type);
  const auto raw = t.bytes();
  const int64_t rows = static_cast<int64_t>(raw.size()) / row_bytes(t.type, k);
  auto codes = at::empty({rows, k}, at::kChar);
  auto scales = at::empty({rows, k / bs}, at::kFloat);
  const auto* in = reinterpret_cast<const uint8_t*>(raw.data());
  auto* c = codes.data_ptr<int8_t>();
  auto* s = scales.data_ptr<float>();
  for (int64_t b = 0; b < rows * (k / bs); ++b) decode_block(in + b * bb, c + b * bs, s + b);
  return {codes, scales};
}

}  // namespace

at::Tensor block_codes(const Tensor& t) { return decode_blocks(t).first; }
at::Tensor block_scales(const Tensor& t) { return decode_blocks(t).second; }

at::Tensor ternary_codes(const Tensor& t) {
  if (t.type != GgmlType::kTQ1_0 && t.type != GgmlType::kTQ2_0) {
    throw std::invalid_argument(fmt::format("gguf: tensor {} is {}, not ternary", t.name, to_string(t.type)));
  }
  return block_codes(t);
}

at::Tensor dequantize(const Tensor& t) {
  std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
  if (!is_block_type(t.type)) {
    const auto raw = t.bytes();
    // One float32 tensor straight from the bytes (F32 included: a copy, never a view of the file).
    int64_t n = 1;
    for (auto d : t.ne) n *= d;
    auto v = at::empty(shape, at::kFloat);
    dequantize_row(static_cast<uint32_t>(t.type), reinterpret_cast<const uint8_t*>(raw.data()), v.data_ptr<float>(), n);
    return v;
  }
  const auto [codes, scales] = decode_blocks(t);
  const int64_t bs = block_size(t.type);
  const auto w = codes.to(at::kFloat).reshape({-1, bs}) * scales.reshape({-1, 1});
  return w.reshape(shape);
}

}  // namespace bitqat::checkpoints::gguf
