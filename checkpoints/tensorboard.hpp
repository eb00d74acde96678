// TensorBoard event files: TFRecord framing of serialized tensorboard.Event protos, written by hand
// (the few fields a scalar log needs), for `log.tensorboard`.
//
// A record: uint64 LE length, uint32 LE masked CRC-32C of those 8 bytes, the data, uint32 LE masked
// CRC-32C of the data. The fields (tensorboard/compat/proto/event.proto and summary.proto):
//   Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//                SessionLog session_log = 7; }
//   Summary    { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//   SessionLog { SessionStatus status = 1; }   (START = 1)
// The first event of a file is file_version "brain.Event:2". A SessionLog START at step s tells a
// reader (TensorBoard's EventAccumulator) to drop every point it read at steps >= s: a resumed run
// writes one at its first step, so the steps that a dead run logged after its last checkpoint are shown
// once, as the resumed run wrote them. (TensorBoard's Rust data server ignores SessionLog but drops a
// series' points from a step on when it reads that step again, which the resumed run's steps are.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitqat::checkpoints {

// CRC-32C (Castagnoli, as iSCSI and TFRecord use it) and TFRecord's masked form of it:
// ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

// One TFRecord: the framing above around `data`.
std::string tfrecord(std::string_view data);

// Serialized Event protos.
std::string file_version_event(double wall_time);
std::string session_start_event(double wall_time, int64_t step);
using Scalars = std::vector<std::pair<std::string, float>>;  // (tag, value)
std::string scalars_event(double wall_time, int64_t step, const Scalars& values);

// Appends events to a new file dir/events.out.tfevents.<seconds>.<host>.<pid>, one file per process
// (as TensorFlow's writers do). Its <seconds> is made larger than that of every event file already
// in `dir`, so that readers, which read a directory's event files in name order, read it last. Each
// call writes its whole record and fsyncs, so that a crash loses nothing written; a failed write
// (a full disk) is cut off again, leaving whole records. Errors are UserErrors naming the file.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  const std::string& path() const { return path_; }
  // A SessionLog START at `step`: readers drop what earlier files hold at steps >= `step`.
  void session_start(int64_t step);
  void scalars(int64_t step, const Scalars& values);

 private:
  void append(const std::string& event);
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace bitqat::checkpoints
