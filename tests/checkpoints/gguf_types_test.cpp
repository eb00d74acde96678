// The GGUF type table against sources that do not share it: gguf-py's constants and ggml's own type
// traits (names, block sizes, bytes per block, file types), and the pairing of each written type with
// its codecs against values derived here from the block layouts.
#include "checkpoints/gguf_types.hpp"

#include <c10/util/Half.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "tests/command.hpp"
#include "tests/llama_cpp.hpp"

using namespace bitqat::checkpoints::gguf;
namespace fs = std::filesystem;

namespace {

// The table as gguf_types_check.py reads it, and bitqat's ggml_type_name of every number to 63.
std::string write_table(const fs::path& dir) {
  fs::create_directories(dir);
  const auto path = (dir / "table.txt").string();
  std::ofstream out(path);
  for (const auto& t : type_table()) {
    out << static_cast<uint32_t>(t.type) << " " << t.name << " " << t.block_size << " " << t.type_size << " "
        << t.file_type << "\n";
  }
  for (uint32_t n = 0; n < 64; ++n) out << "name " << n << " " << ggml_type_name(n) << "\n";
  return path;
}

bitqat::testing::CommandResult check(const std::string& args) {
  return bitqat::testing::run_command(
      fmt::format("'{}' '{}/tests/checkpoints/gguf_types_check.py' {}", BITQAT_PYTHON, BITQAT_SOURCE_DIR, args));
}

}  // namespace

TEST(GgufTypes, NamesSizesAndFileTypesAreGgufPys) {
  const auto dir = fs::temp_directory_path() / ("bitqat_gguf_types_" + std::to_string(::getpid()));
  const auto r = check(write_table(dir));
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.code, 0) << r.out;
  // gguf-py 0.19 predates Q2_0; ggml's own traits cover it (the next test).
  EXPECT_NE(
      r.out.find(fmt::format("{} types checked against gguf-py, absent from it: Q2_0; 0 bad", type_table().size())),
      std::string::npos)
      << r.out;
  fs::remove_all(dir);
}

TEST(GgufTypes, NamesAndSizesAreGgmlsOwnTypeTraits) {
  BITQAT_REQUIRE_LLAMA_CPP_OR_SKIP(BITQAT_PYTHON);
  const auto dir = fs::temp_directory_path() / ("bitqat_gguf_types_ggml_" + std::to_string(::getpid()));
  const auto r = check("--ggml " + write_table(dir));
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(fmt::format("{} types checked against ggml; 0 bad", type_table().size())), std::string::npos)
      << r.out;
  fs::remove_all(dir);
}

// Each written type's row pairs its encoder, decoder and to_float: codes written through the row come
// back through it, and to_float gives code * fp16(d) for every weight.
TEST(GgufTypes, WrittenBlockTypesReadBackCodeTimesHalfScale) {
  int written = 0;
  for (const auto& t : type_table()) {
    if (!t.from_codes) continue;
    ++written;
    ASSERT_NE(t.to_codes, nullptr) << t.name;
    std::vector<int8_t> codes(static_cast<size_t>(2 * t.block_size)), back(codes.size());
    unsigned seed = 7;
    for (auto& c : codes) {
      do {
        seed = seed * 1103515245u + 12345u;
        c = static_cast<int8_t>(static_cast<int>((seed >> 16) % 4) - 1);  // -1 .. 2
      } while (!holds_code(t.type, c));
    }
    const float d[2] = {0.3f, -1.7f};
    std::vector<uint8_t> bytes(static_cast<size_t>(2 * t.type_size));
    for (int b = 0; b < 2; ++b) t.from_codes(codes.data() + b * t.block_size, d[b], bytes.data() + b * t.type_size);
    EXPECT_EQ(row_bytes(t.type, 2 * t.block_size), static_cast<int64_t>(bytes.size())) << t.name;
    std::vector<float> values(codes.size());
    t.to_float(bytes.data(), values.data(), 2 * t.block_size);
    for (int b = 0; b < 2; ++b) {
      float got_d = 0;
      t.to_codes(bytes.data() + b * t.type_size, back.data() + b * t.block_size, &got_d);
      EXPECT_EQ(got_d, static_cast<float>(c10::Half(d[b]))) << t.name;
    }
    EXPECT_EQ(back, codes) << t.name;
    for (size_t i = 0; i < codes.size(); ++i) {
      const float want = static_cast<float>(codes[i]) * static_cast<float>(c10::Half(d[i / t.block_size]));
      ASSERT_EQ(values[i], want) << t.name << " weight " << i;
    }
  }
  EXPECT_EQ(written, 4);  // TQ1_0, TQ2_0, Q1_0, Q2_0
}

// The codes of each written type, from ggml-common.h's layouts: TQ blocks hold trits, Q2_0 two bits
// (code + 1 in 0..3), Q1_0 one sign bit.
TEST(GgufTypes, CodeSetsFollowTheBlockLayouts) {
  for (auto t : {GgmlType::kTQ1_0, GgmlType::kTQ2_0}) {
    EXPECT_TRUE(holds_code(t, -1) && holds_code(t, 0) && holds_code(t, 1) && !holds_code(t, 2)) << to_string(t);
    EXPECT_EQ(code_range(t), std::make_pair(-1, 1));
  }
  EXPECT_TRUE(holds_code(GgmlType::kQ2_0, 0) && holds_code(GgmlType::kQ2_0, 2));
  EXPECT_EQ(code_range(GgmlType::kQ2_0), std::make_pair(-1, 2));
  EXPECT_TRUE(holds_code(GgmlType::kQ1_0, -1) && holds_code(GgmlType::kQ1_0, 1) && !holds_code(GgmlType::kQ1_0, 0));
  EXPECT_FALSE(is_block_type(GgmlType::kQ4_0));
  EXPECT_THROW(code_range(GgmlType::kF16), std::invalid_argument);
  EXPECT_THROW(block_size(static_cast<GgmlType>(11)), std::invalid_argument);  // Q3_K: not in the table
  EXPECT_EQ(find_type_traits(11), nullptr);
}
