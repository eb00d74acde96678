#include "checkpoints/safetensors.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints {
namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
    {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},  {"U8", at::kByte},       {"BOOL", at::kBool},
};

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  throw std::invalid_argument(fmt::format("safetensors: unsupported dtype {}", c10::toString(t)));
}

}  // namespace

std::map<std::string, at::Tensor> SafetensorsFile::by_name() const { return {tensors.begin(), tensors.end()}; }

namespace {

// The 8-byte length and the JSON header of `tensors` (from their dtypes and shapes alone), and the
// data size that follows.
std::string header_bytes(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                         uint64_t* data_size) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || header.contains(name)) {
      throw std::invalid_argument(fmt::format("safetensors: duplicate or reserved tensor name '{}'", name));
    }
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {
        {"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // align the data to 8 bytes, as the Python package does
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  *data_size = offset;
  return out + json;
}

}  // namespace

std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  uint64_t data_size = 0;
  std::string out = header_bytes(tensors, metadata, &data_size);
  out.reserve(out.size() + data_size);
  for (const auto& [name, t] : tensors) {
    const auto c = t.detach().cpu().contiguous();
    out.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return out;
}

void write_safetensors(core::FileWriter& out, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  uint64_t data_size = 0;
  out.write(header_bytes(tensors, metadata, &data_size));
  for (const auto& [name, t] : tensors) {
    const auto c = t.detach().cpu().contiguous();  // one tensor on the host at a time
    if (c.numel() > 0) out.write(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  core::FileWriter out(path);
  write_safetensors(out, tensors, metadata);
  out.commit();
}

namespace {

SafetensorsFile decode_view(std::string_view bytes, const std::string& origin,
                            const std::shared_ptr<const core::MappedFile>& mapping) {
  auto bad = [&](const std::string& what) {
    return core::UserError(fmt::format("{}: not a valid safetensors file: {}", origin, what));
  };
  if (bytes.size() < 8) throw bad(fmt::format("{} bytes is shorter than the 8-byte header length", bytes.size()));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[static_cast<size_t>(i)])) << (8 * i);
  if (n > bytes.size() - 8)
    throw bad(fmt::format("header length {} runs past the end of the {}-byte file", n, bytes.size()));
  const auto header = nlohmann::json::parse(bytes.substr(8, n), nullptr, false);
  if (header.is_discarded() || !header.is_object()) throw bad("the header is not a JSON object");
  const uint64_t data_size = bytes.size() - 8 - n;
  const char* data = bytes.data() + 8 + n;

  SafetensorsFile f;
  struct Entry {
    std::string name;
    uint64_t begin, end;
    at::ScalarType type;
    std::vector<int64_t> shape;
  };
  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad("__metadata__ is not an object");
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) throw bad(fmt::format("__metadata__.{} is not a string", k));
        f.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      throw bad(fmt::format("tensor '{}' lacks dtype, shape or data_offsets", name));
    }
    Entry e{name, 0, 0, at::kFloat, {}};
    const auto dt = v["dtype"].is_string() ? v["dtype"].get<std::string>() : "";
    bool known = false;
    for (const auto& d : kDtypes) {
      if (dt == d.name) e.type = d.type, known = true;
    }
    if (!known) throw bad(fmt::format("tensor '{}' has unsupported dtype '{}'", name, dt));
    if (!v["shape"].is_array()) throw bad(fmt::format("tensor '{}': shape is not a list", name));
    // The element count may overflow 64 bits: keep it in 128 and compare with the file's size.
    unsigned __int128 numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        throw bad(fmt::format("tensor '{}': shape entry {} is not an integer in [0, 2^63)", name, d.dump()));
      }
      e.shape.push_back(d.get<int64_t>());
      numel *= d.get<uint64_t>();
      if (numel > bytes.size()) numel = static_cast<unsigned __int128>(bytes.size()) + 1;  // too big; stays too big
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      throw bad(fmt::format("tensor '{}': data_offsets is not [begin, end]", name));
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    const unsigned __int128 want_wide = numel * c10::elementSize(e.type);
    if (want_wide > bytes.size()) {
      throw bad(fmt::format("tensor '{}': shape [{}] of {} needs more bytes than the whole {}-byte file", name,
                            fmt::join(e.shape, ", "), dt, bytes.size()));
    }
    const auto want = static_cast<uint64_t>(want_wide);
    if (e.end < e.begin || e.end - e.begin != want) {
      throw bad(fmt::format("tensor '{}': data_offsets [{}, {}] hold {} bytes, its {} shape needs {}", name, e.begin,
                            e.end, e.end - e.begin, dt, want));
    }
    if (e.end > data_size) {
      throw bad(fmt::format("tensor '{}': data_offsets end {} is past the {} bytes of data (truncated file?)", name,
                            e.end, data_size));
    }
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t covered = 0;
  for (const auto& e : entries) {
    if (e.begin != covered) {
      throw bad(fmt::format("tensor '{}' starts at byte {} where {} was expected (overlap or gap)", e.name, e.begin,
                            covered));
    }
    covered = e.end;
    const char* p = data + e.begin;
    const auto opts = at::TensorOptions().dtype(e.type);
    if (mapping && e.end > e.begin && reinterpret_cast<uintptr_t>(p) % c10::elementSize(e.type) == 0) {
      // A view of the mapping: the tensor keeps the file mapped while it lives.
      f.tensors.emplace_back(e.name, at::from_blob(
                                         const_cast<char*>(p), e.shape, [mapping](void*) {}, opts));
    } else {
      auto t = at::empty(e.shape, opts);
      if (e.end > e.begin) std::memcpy(t.data_ptr(), p, e.end - e.begin);
      f.tensors.emplace_back(e.name, t);
    }
  }
  if (covered != data_size) {
    throw bad(fmt::format("{} bytes of data follow the last tensor (the data is {} bytes, the tensors cover {})",
                          data_size - covered, data_size, covered));
  }
  f.mapping = mapping;
  return f;
}

}  // namespace

SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& origin) {
  return decode_view(bytes, origin, nullptr);
}

SafetensorsFile decode_safetensors(std::shared_ptr<const core::MappedFile> file, const std::string& origin) {
  return decode_view(file->view(), origin, file);
}

SafetensorsFile load_safetensors(const std::string& path) {
  return decode_safetensors(core::MappedFile::open(path), path);
}

void SafetensorsFile::release(const at::Tensor& t) const {
  if (mapping && t.defined() && t.is_cpu()) mapping->release(t.data_ptr(), static_cast<size_t>(t.nbytes()));
}

}  // namespace bitqat::checkpoints
