// Crash-safe file writing: write to a temporary name, flush and fsync, then rename, so that a kill
// never leaves a half-written file under the final name. Reading without copies: whole files into
// one string, or mapped into memory so that large weight files are never copied into host memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bitqat::core {

// Atomically replace `path` with `bytes` (fsyncs the file and its directory).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Streams a file to a temporary name beside `path` and renames it into place on commit(), keeping
// its size and CRC-32 (for manifests) as the bytes go by. Destroyed without commit() (an exception
// while writing), it removes the temporary file. Errors are UserErrors naming the path.
class FileWriter {
 public:
  explicit FileWriter(std::string path);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync, rename to `path`, fsync the directory.
  void commit();
  uint64_t size() const { return size_; }
  uint32_t crc32() const { return crc_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
};

// Read a whole file into one string (one copy: the file's bytes); throws UserError naming the path
// when it cannot be read.
std::string read_file(const std::string& path);

// A file mapped read-only into memory (copy-on-write private pages: a tensor viewing it may be
// written without touching the file). Pages are read from the file on first access; release()
// drops them from the process's resident set again, so that streaming through a large file costs
// no more memory than the part in use. Shared by everything that views it (tensors keep it alive).
class MappedFile {
 public:
  // Throws UserError naming the path when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data_), static_cast<size_t>(size_)}; }
  // Drops the whole pages inside [p, p + n) from the resident set when they lie in this mapping (a
  // no-op for memory elsewhere); later reads fetch them from the file again. Any change written to
  // those pages is lost, so only call it for ranges nobody has modified and nobody still needs.
  void release(const void* p, size_t n) const;
  // CRC-32 of the whole file, releasing each chunk after it is read.
  uint32_t crc32_streaming() const;

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Resident set of this process now and its peak so far (VmRSS and VmHWM of /proc/self/status), in
// bytes; 0 where the kernel does not say. For benchmarks and memory tests.
struct MemoryUse {
  int64_t rss = 0, peak_rss = 0;
};
MemoryUse memory_use();
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
