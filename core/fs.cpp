#include "core/fs.hpp"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "core/error.hpp"

namespace bitqat::core {

namespace fs = std::filesystem;

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems refuse directory fds
  ::fsync(fd);
  ::close(fd);
}

FileWriter::FileWriter(std::string path) : path_(std::move(path)) {
  const fs::path p(path_);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) throw UserError(fmt::format("{}: cannot create file: {}", tmp_, std::strerror(errno)));
}

FileWriter::~FileWriter() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(tmp_.c_str());
}

void FileWriter::write(const void* data, size_t size) {
  if (fd_ < 0) throw std::logic_error("FileWriter::write after commit");
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd_, p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw UserError(fmt::format("{}: write failed: {}", tmp_, std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  crc_ = core::crc32(data, size, crc_);
  size_ += size;
}

void FileWriter::commit() {
  if (fd_ < 0) throw std::logic_error("FileWriter::commit twice");
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw UserError(fmt::format("{}: flush failed: {}", tmp_, std::strerror(err)));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw UserError(fmt::format("{}: rename to {} failed: {}", tmp_, path_, std::strerror(err)));
  }
  const fs::path p(path_);
  fsync_dir(p.has_parent_path() ? p.parent_path().string() : ".");
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  FileWriter w(path);
  w.write(bytes);
  w.commit();
}

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    throw UserError(fmt::format("{}: cannot open file for reading", path));
  }
  // Read straight into the result (no stream buffer and no second copy); a file that grows or
  // shrinks meanwhile is read to its end.
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (true) {
    if (done == out.size()) out.resize(out.size() + 65536);
    const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw UserError(fmt::format("{}: read failed: {}", path, std::strerror(err)));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(done);
  return out;
}

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    throw UserError(fmt::format("{}: cannot open file for reading", path));
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<uint64_t>(st.st_size);
  if (m->size_ > 0) {
    // PROT_WRITE with MAP_PRIVATE: copy-on-write pages, so a tensor viewing the file may be changed
    // in place without changing the file.
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw UserError(fmt::format("{}: cannot map the file into memory: {}", path, std::strerror(err)));
    }
    m->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

void MappedFile::release(const void* p, size_t n) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto lo = std::max(reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(data_));
  const auto hi = std::min(reinterpret_cast<uintptr_t>(p) + n, reinterpret_cast<uintptr_t>(data_) + size_);
  const uintptr_t first = (lo + page - 1) / page * page, last = hi / page * page;
  if (!data_ || first >= last) return;
  ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

uint32_t MappedFile::crc32_streaming() const {
  constexpr uint64_t kChunk = uint64_t{64} << 20;
  uint32_t crc = 0;
  for (uint64_t off = 0; off < size_; off += kChunk) {
    const auto n = static_cast<size_t>(std::min(kChunk, size_ - off));
    crc = core::crc32(data_ + off, n, crc);
    release(data_ + off, n);
  }
  return crc;
}

MemoryUse memory_use() {
  MemoryUse m;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    int64_t kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %ld kB", &kb) == 1) m.rss = kb * 1024;
    if (std::sscanf(line.c_str(), "VmHWM: %ld kB", &kb) == 1) m.peak_rss = kb * 1024;
  }
  return m;
}

std::string read_file_range(const std::string& path, uint64_t offset, uint64_t length) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot open file for reading", path));
  std::string out(length, '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out.data(), static_cast<std::streamsize>(length));
  if (static_cast<uint64_t>(in.gcount()) != length) {
    throw UserError(fmt::format("{}: cannot read {} bytes at offset {} (the file is shorter)", path, length, offset));
  }
  return out;
}

void rename_dir_atomic(const std::string& tmp, const std::string& dest) {
  fsync_dir(tmp);
  if (::rename(tmp.c_str(), dest.c_str()) != 0) {
    throw UserError(fmt::format("{}: rename to {} failed: {}", tmp, dest, std::strerror(errno)));
  }
  const fs::path p(dest);
  fsync_dir(p.has_parent_path() ? p.parent_path().string() : ".");
}

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t g{};
  std::vector<std::string> out;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  std::sort(out.begin(), out.end());
  return out;
}

uint32_t crc32(const void* data, size_t size, uint32_t seed) {
  uLong crc = seed;
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    size -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace bitqat::core
