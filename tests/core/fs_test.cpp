#include "core/fs.hpp"

#include <gtest/gtest.h>

#include <filesystem>

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
