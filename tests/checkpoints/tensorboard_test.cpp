// TensorBoard event files: the CRC-32C against RFC 3720's vectors, its TFRecord mask and a whole
// record checked byte by byte, the writer's file naming and its errors. What TensorBoard itself reads
// from a training run is tested end to end in tests/training/trainer_test.cpp.
#include "checkpoints/tensorboard.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/fs.hpp"
#include "tests/user_error.hpp"

namespace fs = std::filesystem;
using namespace bitqat::checkpoints;
using bitqat::testing::error_of;

namespace {

std::string bytes_of(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s.push_back(static_cast<char>(b));
  return s;
}

std::string hex(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += fmt::format("{:02x}", c);
  return out;
}

uint32_t le32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

}  // namespace

TEST(TensorBoard, Crc32cMatchesRfc3720) {
  // RFC 3720, appendix B.4: 32 bytes of zeros, of ones, ascending 0..31, descending 31..0.
  std::string zeros(32, '\0'), ones(32, '\xff'), up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62a8ab43u);
  EXPECT_EQ(crc32c(up.data(), up.size()), 0x46dd794eu);
  EXPECT_EQ(crc32c(down.data(), down.size()), 0x113fdb5cu);
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);  // the CRC catalogue's check value
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(TensorBoard, MaskedCrcByHand) {
  // ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2^32. For the zeros' 0x8a9136aa:
  // 0x8a9136aa >> 15 = 0x00011522, 0x8a9136aa << 17 = 0x6d540000, or: 0x6d551522,
  // + 0xa282ead8 = 0x1_0fd7fffa -> 0x0fd7fffa.
  const std::string zeros(32, '\0');
  EXPECT_EQ(masked_crc32c(zeros.data(), zeros.size()), 0x0fd7fffau);
  EXPECT_EQ(masked_crc32c("", 0), 0xa282ead8u);  // crc 0: only the constant
}

TEST(TensorBoard, OneScalarRecordByteByByte) {
  const std::string event = scalars_event(1.5, 3, {{"loss", 0.5f}});
  const std::string want_event = bytes_of({
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f,  // wall_time (1, fixed64): 1.5
      0x10, 0x03,                                            // step (2, varint): 3
      0x2a, 0x0d,                                            // summary (5, 13 bytes)
      0x0a, 0x0b,                                            //   value (1, 11 bytes)
      0x0a, 0x04, 'l',  'o',  's',  's',                     //     tag (1): "loss"
      0x15, 0x00, 0x00, 0x00, 0x3f,                          //     simple_value (2, fixed32): 0.5f
  });
  EXPECT_EQ(hex(event), hex(want_event));
  const std::string record = tfrecord(event);
  ASSERT_EQ(record.size(), 8 + 4 + 26 + 4u);
  EXPECT_EQ(hex(record.substr(0, 8)), "1a00000000000000");  // length 26, little-endian
  EXPECT_EQ(le32(record, 8), masked_crc32c(record.data(), 8));
  EXPECT_EQ(record.substr(12, 26), event);
  EXPECT_EQ(le32(record, 38), masked_crc32c(event.data(), event.size()));
  // The same bytes as TensorBoard's own RecordWriter writes for this event (checked once with
  // tensorboard 2.21.0's tensorboard.summary.writer.record_writer).
  EXPECT_EQ(hex(record), "1a00000000000000129bd82d09000000000000f83f10032a0d0a0b0a046c6f7373150000003f80655ee3");
}

TEST(TensorBoard, FileVersionAndSessionStartEvents) {
  EXPECT_EQ(hex(file_version_event(1.0)),
            "09000000000000f03f"                // wall_time 1.0
            "1000"                              // step 0
            "1a0d627261696e2e4576656e743a32");  // file_version (3): "brain.Event:2"
  EXPECT_EQ(hex(session_start_event(2.0, 6)),
            "0900000000000000401006"  // wall_time 2.0, step 6
            "3a020801");              // session_log (7, 2 bytes) { status (1): START = 1 }
}

TEST(TensorBoard, WriterNamesFilesToSortAfterEarlierOnesAndWritesWholeRecords) {
  const auto dir = fs::temp_directory_path() / ("bitqat_tensorboard_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // An event file from the future (another clock, or a run earlier in the same second).
  bitqat::core::write_file_atomic((dir / "events.out.tfevents.9999999999.host.1").string(), "");
  std::string path;
  {
    EventFileWriter w(dir.string());
    path = w.path();
    w.session_start(4);
    w.scalars(4, {{"loss", 2.0f}, {"lr", 1e-3f}});
  }
  const auto name = fs::path(path).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.10000000000.", 0), 0u) << name;
  EXPECT_EQ(name.substr(name.rfind('.') + 1), std::to_string(::getpid()));
  // Three whole records, each with good CRCs, the first the file version.
  const auto bytes = bitqat::core::read_file(path);
  size_t at = 0;
  int records = 0;
  while (at < bytes.size()) {
    ASSERT_LE(at + 12, bytes.size());
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = len << 8 | static_cast<unsigned char>(bytes[at + i]);
    EXPECT_EQ(le32(bytes, at + 8), masked_crc32c(bytes.data() + at, 8));
    ASSERT_LE(at + 12 + len + 4, bytes.size());
    const auto data = bytes.substr(at + 12, len);
    EXPECT_EQ(le32(bytes, at + 12 + len), masked_crc32c(data.data(), data.size()));
    if (records == 0) {
      EXPECT_NE(data.find("brain.Event:2"), std::string::npos);
    }
    at += 12 + len + 4;
    ++records;
  }
  EXPECT_EQ(records, 3);
  fs::remove_all(dir);
}

TEST(TensorBoard, AnUnwritableDirectoryIsNamed) {
  // A directory inside a regular file cannot be made (root may write anywhere else).
  const auto file = fs::temp_directory_path() / ("bitqat_tensorboard_file_" + std::to_string(::getpid()));
  bitqat::core::write_file_atomic(file.string(), "x");
  const auto msg = error_of([&] { EventFileWriter w((file / "run").string()); });
  EXPECT_NE(msg.find((file / "run/events.out.tfevents.").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot create the TensorBoard event file: Not a directory"), std::string::npos) << msg;
  fs::remove(file);
}
