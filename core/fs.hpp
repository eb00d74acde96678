// Crash-safe file writing: write to a temporary name, flush and fsync, then rename, so that a kill
// never leaves a half-written file under the final name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bitqat::core {

// Atomically replace `path` with `bytes` (fsyncs the file and its directory).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Read a whole file; throws UserError naming the path when it cannot be read.
std::string read_file(const std::string& path);
// Read `length` bytes at `offset`; throws UserError naming the path when they cannot be read.
std::string read_file_range(const std::string& path, uint64_t offset, uint64_t length);

// fsync a directory so that a rename inside it is durable.
void fsync_dir(const std::string& dir);

// Atomically rename a fully written directory `tmp` to `dest` (dest must not exist).
void rename_dir_atomic(const std::string& tmp, const std::string& dest);

// Files matching a glob pattern, sorted; empty when none.
std::vector<std::string> glob_files(const std::string& pattern);

// CRC-32 (IEEE) of a byte range, for checkpoint manifests.
uint32_t crc32(const void* data, size_t size, uint32_t seed = 0);

}  // namespace bitqat::core
