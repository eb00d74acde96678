#include "checkpoints/gguf.hpp"

#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

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

// What precedes the tensor infos: the magic, the version, the counts and the metadata.
struct Header {
  uint64_t n_tensors = 0;
  std::vector<std::pair<std::string, Value>> metadata;  // in file order
  uint64_t alignment = kDefaultAlignment;               // general.alignment, checked
};

Value read_value(Cursor* c, const std::string& key, uint64_t file_size) {
  const auto type = c->get<uint32_t>("a value type");
  if (!known_value_type(type)) throw c->bad(fmt::format("metadata {}: unknown value type {}", key, type));
  Value v;
  v.type = v.elem = static_cast<ValueType>(type);
  if (v.type != ValueType::kArray) {
    v.data = get_scalar(c, v.type, key);
    return v;
  }
  const auto elem = c->get<uint32_t>("an array type");
  if (!known_value_type(elem) || elem == static_cast<uint32_t>(ValueType::kArray)) {
    throw c->bad(fmt::format("metadata {}: unsupported array element type {}", key, elem));
  }
  v.elem = static_cast<ValueType>(elem);
  const auto n = c->get<uint64_t>("an array length");
  if (n > file_size) throw c->bad(fmt::format("metadata {}: array length {} larger than the file", key, n));
  v.data = nlohmann::json::array();
  for (uint64_t j = 0; j < n; ++j) v.data.push_back(get_scalar(c, v.elem, key));
  return v;
}

Header read_header(Cursor* c, std::string_view bytes) {
  if (bytes.size() < 4 || std::memcmp(bytes.data(), kMagic, 4) != 0) throw c->bad("the magic is not GGUF");
  c->get<uint32_t>("the magic");
  const auto version = c->get<uint32_t>("the version");
  if (version != kVersion) throw c->bad(fmt::format("version {}, this reader knows version {}", version, kVersion));
  Header h;
  h.n_tensors = c->get<uint64_t>("the tensor count");
  const auto n_kv = c->get<uint64_t>("the metadata count");
  if (h.n_tensors > bytes.size() || n_kv > bytes.size()) throw c->bad("tensor or metadata count larger than the file");
  for (uint64_t i = 0; i < n_kv; ++i) {
    auto key = c->get_string("a metadata key");
    auto v = read_value(c, key, bytes.size());
    if (key == "general.alignment") {
      if (v.type != ValueType::kUint32) throw c->bad("general.alignment is not a uint32");
      h.alignment = v.data.get<uint64_t>();
      if (h.alignment == 0 || (h.alignment & (h.alignment - 1)) != 0) {
        throw c->bad(fmt::format("general.alignment = {} is not a power of two", h.alignment));
      }
    }
    h.metadata.emplace_back(std::move(key), std::move(v));
  }
  return h;
}

// One tensor info; its offset is returned in *offset (relative to the data section).
Tensor read_tensor_info(Cursor* c, uint64_t file_size, uint64_t alignment, uint64_t* offset) {
  Tensor t;
  t.name = c->get_string("a tensor name");
  const auto n_dims = c->get<uint32_t>("a dimension count");
  if (n_dims < 1 || n_dims > 4) throw c->bad(fmt::format("tensor {}: {} dimensions (1 to 4 allowed)", t.name, n_dims));
  for (uint32_t d = 0; d < n_dims; ++d) {
    const auto n = c->get<uint64_t>("a dimension");
    if (n == 0 || n > file_size * 8) throw c->bad(fmt::format("tensor {}: dimension {} = {}", t.name, d, n));
    t.ne.push_back(static_cast<int64_t>(n));
  }
  const auto type = c->get<uint32_t>("a tensor type");
  if (!find_type_traits(type)) {
    throw c->bad(fmt::format("tensor {}: ggml type {} ({}) is not supported (bitqat reads {})", t.name,
                             ggml_type_name(type), type, type_names()));
  }
  t.type = static_cast<GgmlType>(type);
  *offset = c->get<uint64_t>("a tensor offset");
  if (*offset % alignment != 0) {
    throw c->bad(fmt::format("tensor {}: offset {} is not aligned to {}", t.name, *offset, alignment));
  }
  return t;
}

File decode_view(std::string_view bytes, const std::string& origin,
                 const std::shared_ptr<const core::MappedFile>& mapping) {
  Cursor c(bytes, origin);
  auto header = read_header(&c, bytes);
  File f;
  f.metadata = std::move(header.metadata);
  const uint64_t alignment = header.alignment;
  std::vector<uint64_t> offsets;  // grown as infos are read: a false count fails on the truncation
  for (uint64_t i = 0; i < header.n_tensors; ++i) {
    uint64_t offset = 0;
    f.tensors.push_back(read_tensor_info(&c, bytes.size(), alignment, &offset));
    offsets.push_back(offset);
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

std::vector<std::pair<std::string, Value>> decode_metadata(const std::string& bytes, const std::string& origin) {
  Cursor c(bytes, origin);
  return read_header(&c, bytes).metadata;
}

std::vector<std::pair<std::string, Value>> load_metadata(const std::string& path) {
  return decode_metadata(core::read_file(path), path);
}

}  // namespace bitqat::checkpoints::gguf
