#include "checkpoints/tensorboard.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/crc.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::checkpoints {

namespace {

// Little-endian fixed-width integers, byte by byte (the host's order does not matter).
void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Protobuf wire types: 0 varint, 1 64-bit, 2 length-delimited, 5 32-bit.
void put_tag(std::string& out, int field, int wire_type) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes.data(), bytes.size());
}

void put_double(std::string& out, int field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_tag(out, field, 1);
  put_le(out, bits, 8);
}

void put_float(std::string& out, int field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_tag(out, field, 5);
  put_le(out, bits, 4);
}

// Event fields shared by every event: wall_time = 1, step = 2 (int64: a negative step would be the
// 10-byte two's complement varint).
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  put_double(e, 1, wall_time);
  put_tag(e, 2, 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The <seconds> field of events.out.tfevents.<seconds>.<host>.<pid>, or -1.
int64_t seconds_of(const std::string& name) {
  static const std::string prefix = "events.out.tfevents.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  int64_t s = 0;
  size_t i = prefix.size();
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) s = s * 10 + (name[i] - '0');
  return s;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, size);
  return crc.checksum();
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(out.data(), 8), 4);
  out.append(data.data(), data.size());
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

std::string file_version_event(double wall_time) {
  auto e = event_head(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  auto e = event_head(wall_time, step);
  std::string log;
  put_tag(log, 1, 0);  // status
  put_varint(log, 1);  // START
  put_bytes(e, 7, log);
  return e;
}

std::string scalars_event(double wall_time, int64_t step, const Scalars& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    put_float(value, 2, v);
    put_bytes(summary, 1, value);
  }
  auto e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

EventFileWriter::EventFileWriter(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  const double now = now_seconds();
  auto seconds = static_cast<int64_t>(now);
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const int64_t s = seconds_of(entry.path().filename().string());
    if (s >= seconds) seconds = s + 1;
  }
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  path_ = fmt::format("{}/events.out.tfevents.{}.{}.{}", dir, seconds, host, ::getpid());
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw core::UserError(
        fmt::format("{}: cannot create the TensorBoard event file: {} (log.tensorboard: make the "
                    "run directory writable, or set log.tensorboard: false)",
                    path_, std::strerror(errno)));
  }
  append(file_version_event(now));
  core::fsync_dir(dir);
}

EventFileWriter::~EventFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventFileWriter::session_start(int64_t step) { append(session_start_event(now_seconds(), step)); }

void EventFileWriter::scalars(int64_t step, const Scalars& values) {
  append(scalars_event(now_seconds(), step, values));
}

void EventFileWriter::append(const std::string& event) {
  const std::string record = tfrecord(event);
  size_t done = 0;
  int err = 0;
  while (done < record.size()) {
    const ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (err == 0 && ::fsync(fd_) != 0) err = errno;
  if (err != 0) {
    // Cut a partly written record off again, so that the file stays a sequence of whole records.
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
      // Nothing more to do: readers stop at a truncated last record.
    }
    throw core::UserError(fmt::format("{}: cannot write the TensorBoard event file: {}", path_, std::strerror(err)));
  }
  size_ += record.size();
}

}  // namespace bitqat::checkpoints
