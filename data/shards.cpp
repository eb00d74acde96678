// llm.c token shards (256 int32 header: magic 20240520, version 1, token count; then uint16 tokens).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"

namespace bitqat::data {

void write_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  std::string bytes(1024 + 2 * tokens.size(), '\0');
  std::memcpy(bytes.data(), header.data(), 1024);
  if (!tokens.empty()) std::memcpy(bytes.data() + 1024, tokens.data(), 2 * tokens.size());
  core::write_file_atomic(path, bytes);
}

namespace {

// The header's token count, checked against the file size.
int64_t checked_count(const std::string& path, const std::string& head, uint64_t file_size) {
  if (head.size() < 1024) {
    throw core::UserError(
        fmt::format("{}: {} bytes is shorter than the 1024-byte llm.c shard header", path, file_size));
  }
  int32_t header[256];
  std::memcpy(header, head.data(), sizeof(header));
  if (header[0] != kShardMagic) {
    throw core::UserError(
        fmt::format("{}: magic number {} is not an llm.c token shard (expected {})", path, header[0], kShardMagic));
  }
  if (header[1] != kShardVersion) {
    throw core::UserError(fmt::format("{}: shard version {} is not supported (expected {}: uint16 tokens)", path,
                                      header[1], kShardVersion));
  }
  const int64_t count = header[2];
  const uint64_t want = 1024 + 2 * static_cast<uint64_t>(std::max<int64_t>(count, 0));
  if (count < 0 || file_size != want) {
    throw core::UserError(fmt::format("{}: header says {} tokens ({} bytes with the header), the file has {} bytes",
                                      path, count, want, file_size));
  }
  return count;
}

}  // namespace

int64_t read_shard_count(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw core::UserError(fmt::format("{}: cannot read the file: {}", path, ec.message()));
  return checked_count(path, core::read_file_range(path, 0, std::min<uint64_t>(size, 1024)), size);
}

std::vector<uint16_t> read_shard(const std::string& path) {
  const std::string bytes = core::read_file(path);
  const int64_t count = checked_count(path, bytes, bytes.size());
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  if (count > 0) std::memcpy(tokens.data(), bytes.data() + 1024, 2 * tokens.size());
  return tokens;
}

}  // namespace bitqat::data
