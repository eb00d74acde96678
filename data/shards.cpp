// llm.c token shards (256 int32 header: magic, version, token count; then uint16 or uint32 tokens).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"

namespace bitqat::data {

namespace {

template <typename T>
void write_any(const std::string& path, const std::vector<T>& tokens, int32_t magic, int32_t version) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = static_cast<int32_t>(tokens.size());
  core::FileWriter out(path);
  out.write(header.data(), 1024);
  if (!tokens.empty()) out.write(tokens.data(), sizeof(T) * tokens.size());
  out.commit();
}

}  // namespace

void write_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  write_any(path, tokens, kShardMagic, kShardVersion);
}

void write_shard32(const std::string& path, const std::vector<uint32_t>& tokens) {
  write_any(path, tokens, kShard32Magic, kShard32Version);
}

namespace {

struct ShardHeader {
  int64_t count;
  int token_bytes;  // 2 or 4
};

// The header's token count and width, checked against the file size.
ShardHeader checked_header(const std::string& path, std::string_view head, uint64_t file_size) {
  if (head.size() < 1024) {
    throw core::UserError(
        fmt::format("{}: {} bytes is shorter than the 1024-byte llm.c shard header", path, file_size));
  }
  int32_t header[256];
  std::memcpy(header, head.data(), sizeof(header));
  if (header[0] != kShardMagic && header[0] != kShard32Magic) {
    throw core::UserError(fmt::format(
        "{}: magic number {} is not an llm.c token shard (expected {} for uint16 tokens or {} for uint32 tokens)",
        path, header[0], kShardMagic, kShard32Magic));
  }
  const bool wide = header[0] == kShard32Magic;
  const int32_t version = wide ? kShard32Version : kShardVersion;
  if (header[1] != version) {
    throw core::UserError(fmt::format("{}: shard version {} is not supported (expected {}: {} tokens)", path,
                                      header[1], version, wide ? "uint32" : "uint16"));
  }
  const int64_t count = header[2];
  const int bytes = wide ? 4 : 2;
  const uint64_t want = 1024 + bytes * static_cast<uint64_t>(std::max<int64_t>(count, 0));
  if (count < 0 || file_size != want) {
    throw core::UserError(fmt::format("{}: header says {} tokens ({} bytes with the header), the file has {} bytes",
                                      path, count, want, file_size));
  }
  return {count, bytes};
}

}  // namespace

int64_t read_shard_count(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw core::UserError(fmt::format("{}: cannot read the file: {}", path, ec.message()));
  return checked_header(path, core::read_file_range(path, 0, std::min<uint64_t>(size, 1024)), size).count;
}

std::vector<uint16_t> read_shard(const std::string& path) {
  const auto file = core::MappedFile::open(path);
  const auto h = checked_header(path, file->view(), file->size());
  if (h.token_bytes != 2) {
    throw core::UserError(fmt::format("{}: holds uint32 tokens (magic {}); expected a uint16 shard", path,
                                      kShard32Magic));
  }
  std::vector<uint16_t> tokens(static_cast<size_t>(h.count));
  if (h.count > 0) std::memcpy(tokens.data(), file->data() + 1024, 2 * tokens.size());
  return tokens;
}

std::vector<uint32_t> read_shard_tokens(const std::string& path) {
  const auto file = core::MappedFile::open(path);
  const auto h = checked_header(path, file->view(), file->size());
  std::vector<uint32_t> tokens(static_cast<size_t>(h.count));
  const uint8_t* p = file->data() + 1024;
  if (h.token_bytes == 4) {
    if (h.count > 0) std::memcpy(tokens.data(), p, 4 * tokens.size());
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(p[2 * i] | (p[2 * i + 1] << 8));
  }
  return tokens;
}

}  // namespace bitqat::data
