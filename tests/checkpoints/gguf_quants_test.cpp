// The dequantizers of the float and block-quantized GGUF types published models use, against
// llama.cpp's own Python package: gguf-py writes the file (quantizing with its own quantizers where
// it has them) and dequantizes it; bitqat must read every value bit for bit the same.
#include "checkpoints/gguf_quants.hpp"

#include <c10/util/Half.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "checkpoints/gguf.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "tests/command.hpp"

using namespace bitqat::checkpoints;
namespace fs = std::filesystem;

namespace {

class GgufQuantsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bitqat_gguf_quants_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    const std::string python = BITQAT_PYTHON;
    ASSERT_FALSE(python.empty()) << "BITQAT_PYTHON is not set: configure with -DPython3_EXECUTABLE=.venv/bin/python";
    const auto r = bitqat::testing::run_command(
        fmt::format("'{}' '{}/tests/checkpoints/make_gguf_quants.py' '{}'", python, BITQAT_SOURCE_DIR, dir_.string()));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

uint16_t half_bits(float f) { return c10::Half(f).x; }

}  // namespace

TEST_F(GgufQuantsTest, EveryTypeReadsExactlyAsGgufPyReadsIt) {
  const auto file = gguf::load((dir_ / "quants.gguf").string());
  const auto expected = load_safetensors((dir_ / "expected.safetensors").string()).by_name();
  ASSERT_EQ(file.tensors.size(), 12u);
  std::set<std::string> types;
  for (const auto& t : file.tensors) {
    ASSERT_TRUE(expected.count(t.name)) << t.name;
    types.insert(gguf::to_string(t.type));
    const auto got = gguf::dequantize(t);
    const auto& want = expected.at(t.name);
    ASSERT_EQ(got.sizes(), want.sizes()) << t.name;
    // Bit for bit: the same products and sums in the same order as ggml's C and gguf-py's numpy.
    const auto diff = at::ne(got.view(at::kInt), want.view(at::kInt)).sum().item<int64_t>();
    EXPECT_EQ(diff, 0) << t.name << " (" << gguf::to_string(t.type) << "): " << diff << " values differ, max |diff| "
                       << (got - want).abs().max().item<double>();
    EXPECT_GT(want.abs().max().item<double>(), 0.1) << t.name << ": the fixture holds real values";
  }
  EXPECT_EQ(types, (std::set<std::string>{"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K",
                                          "Q6_K"}));
}

TEST_F(GgufQuantsTest, AnUnsupportedTypeIsRefusedByName) {
  try {
    gguf::load((dir_ / "q3_k.gguf").string());
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("q3_k.gguf: not a valid GGUF file: tensor blk.0.attn_q.weight: ggml type Q3_K (11) is not "
                     "supported (bitqat reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, TQ1_0, "
                     "TQ2_0, Q1_0, Q2_0)"),
              std::string::npos)
        << m;
  }
}

// Hand-derived blocks pin the layouts independently of gguf-py.
TEST(GgufQuantBlocks, Q4_0AndQ8_0ByHand) {
  uint8_t q4[18] = {};
  const uint16_t d = half_bits(0.5f);
  std::memcpy(q4, &d, 2);
  q4[2] = 0x9F;  // weight 0: low nibble 15 -> (15 - 8) * 0.5 = 3.5; weight 16: high nibble 9 -> 0.5
  float y[32];
  gguf::dequantize_row(2, q4, y, 32);
  EXPECT_EQ(y[0], 3.5f);
  EXPECT_EQ(y[16], 0.5f);
  EXPECT_EQ(y[1], -4.0f);  // nibble 0 -> (0 - 8) * 0.5
  uint8_t q8[34] = {};
  std::memcpy(q8, &d, 2);
  q8[2 + 5] = static_cast<uint8_t>(-7);
  gguf::dequantize_row(8, q8, y, 32);
  EXPECT_EQ(y[5], -3.5f);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_THROW(gguf::dequantize_row(8, q8, y, 31), std::invalid_argument);
  EXPECT_THROW(gguf::dequantize_row(11, q8, y, 256), std::invalid_argument);  // Q3_K is not read
}

TEST(GgufQuantBlocks, Q6_KHighBitsAndScalesByHand) {
  // Weight 128 + 32 * 3 + 5 (half 1, quarter 3, l = 5): the high nibble of ql[64 + 5 + 32], bits 6-7
  // of qh[32 + 5], scale scales[8 + 0 + 6]; d = 0.25.
  uint8_t b[210] = {};
  const uint16_t d = half_bits(0.25f);
  std::memcpy(b + 208, &d, 2);
  b[64 + 5 + 32] = 0x70;                      // high nibble 7
  b[128 + 32 + 5] = 2 << 6;                   // high bits 2 -> q = 7 | 32 = 39, minus 32 = 7
  b[192 + 8 + 6] = static_cast<uint8_t>(-3);  // int8 scale -3
  float y[256];
  gguf::dequantize_row(14, b, y, 256);
  EXPECT_EQ(y[128 + 96 + 5], 0.25f * -3.0f * 7.0f);
  EXPECT_EQ(y[0], 0.0f);  // scale 0
}

TEST(GgufQuantBlocks, NamesAndSizes) {
  EXPECT_STREQ(gguf::ggml_type_name(12), "Q4_K");
  EXPECT_STREQ(gguf::ggml_type_name(23), "IQ4_XS");
  EXPECT_STREQ(gguf::ggml_type_name(1000), "unknown");
  EXPECT_EQ(gguf::find_type_traits(13)->type_size, 176);
  EXPECT_EQ(gguf::find_type_traits(9), nullptr);  // Q8_1 is not read
  EXPECT_EQ(gguf::row_bytes(gguf::GgmlType::kQ4_1, 64), 40);
  EXPECT_THROW(gguf::row_bytes(gguf::GgmlType::kQ4_K, 100), std::invalid_argument);
}
