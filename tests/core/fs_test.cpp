#include "core/fs.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <iterator>

#include "core/error.hpp"

namespace fs = std::filesystem;

TEST(Fs, AtomicWriteReplacesAndLeavesNoTemporary) {
  const auto dir = fs::temp_directory_path() / "bitqat_fs_test";
  fs::remove_all(dir);
  const auto path = (dir / "sub" / "a.txt").string();
  bitqat::core::write_file_atomic(path, "first");
  bitqat::core::write_file_atomic(path, "second");
  EXPECT_EQ(bitqat::core::read_file(path), "second");
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir / "sub")) n += e.is_regular_file();
  EXPECT_EQ(n, 1);
  fs::remove_all(dir);
}

TEST(Fs, ReadMissingFileNamesIt) {
  try {
    bitqat::core::read_file("/nonexistent/x.bin");
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.bin"), std::string::npos);
  }
}

TEST(Fs, Crc32KnownValue) {
  // CRC-32/ISO-HDLC of "123456789" is 0xCBF43926.
  EXPECT_EQ(bitqat::core::crc32("123456789", 9), 0xCBF43926u);
}

namespace {

fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("bitqat_fs_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST(Fs, FileWriterStreamsCountsAndCommitsAtomically) {
  const auto dir = fresh_dir("writer");
  const auto path = (dir / "out.bin").string();
  {
    bitqat::core::FileWriter w(path);
    w.write("12345");
    w.write(std::string("6789"));
    EXPECT_FALSE(fs::exists(path));  // nothing under the final name before commit
    EXPECT_EQ(w.size(), 9u);
    EXPECT_EQ(w.crc32(), 0xCBF43926u);  // the CRC of "123456789", accumulated across writes
    w.commit();
  }
  EXPECT_EQ(bitqat::core::read_file(path), "123456789");
  {
    bitqat::core::FileWriter w(path);
    w.write("half-written");
    // destroyed without commit(), as when an exception interrupts a checkpoint
  }
  EXPECT_EQ(bitqat::core::read_file(path), "123456789");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);  // no temporary left
  fs::remove_all(dir);
}

TEST(Fs, MappedFileViewsTheBytesAndReleaseKeepsThemReadable) {
  const auto dir = fresh_dir("map");
  const auto path = (dir / "big.bin").string();
  std::string bytes(48u << 20, '\0');  // 48 MiB of a pattern
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 24);
  bitqat::core::write_file_atomic(path, bytes);
  const auto m = bitqat::core::MappedFile::open(path);
  ASSERT_EQ(m->size(), bytes.size());
  EXPECT_EQ(m->crc32_streaming(), bitqat::core::crc32(bytes.data(), bytes.size()));
  // Touching every page makes them resident; release() gives them back (the file pages are clean, so
  // the resident set falls by about their size), and the bytes read back unchanged from the file.
  const auto before = bitqat::core::memory_use().rss;
  uint64_t sum = 0;
  for (size_t i = 0; i < m->size(); i += 4096) sum += m->data()[i];
  const auto touched = bitqat::core::memory_use().rss;
  m->release(m->data(), m->size());
  const auto released = bitqat::core::memory_use().rss;
  EXPECT_GT(touched - before, 40 << 20) << "touched " << touched << ", before " << before;
  EXPECT_GT(touched - released, 40 << 20) << "touched " << touched << ", released " << released;
  EXPECT_TRUE(m->view() == bytes);
  EXPECT_GT(sum, 0u);
  // Memory elsewhere is never released: a pointer outside the mapping is a no-op.
  std::string other(1 << 20, 'x');
  m->release(other.data(), other.size());
  EXPECT_EQ(other[12345], 'x');
  EXPECT_THROW(bitqat::core::MappedFile::open((dir / "missing").string()), bitqat::core::UserError);
  bitqat::core::write_file_atomic((dir / "empty").string(), "");
  EXPECT_EQ(bitqat::core::MappedFile::open((dir / "empty").string())->size(), 0u);
  EXPECT_EQ(bitqat::core::read_file(path), bytes);
  fs::remove_all(dir);
}
