#include "checkpoints/gguf.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "tests/command.hpp"
#include "tests/llama_cpp.hpp"

using namespace bitqat::checkpoints;
using namespace bitqat::checkpoints::gguf;
namespace fs = std::filesystem;

namespace {

std::vector<int8_t> random_codes(int n, unsigned seed) {
  std::vector<int8_t> c(static_cast<size_t>(n));
  for (auto& v : c) {
    seed = seed * 1103515245u + 12345u;
    v = static_cast<int8_t>(static_cast<int>((seed >> 16) % 3) - 1);
  }
  return c;
}

File sample_file() {
  File f;
  f.metadata = {
      {"general.architecture", Value::str("bitnet")},
      {"general.alignment", Value::u32(64)},
      {"a.u8", {ValueType::kUint8, ValueType::kUint8, 200}},
      {"a.i8", {ValueType::kInt8, ValueType::kInt8, -5}},
      {"a.u16", {ValueType::kUint16, ValueType::kUint16, 60000}},
      {"a.i16", {ValueType::kInt16, ValueType::kInt16, -300}},
      {"a.i32", Value::i32(-7)},
      {"a.f32", Value::f32(0.5f)},
      {"a.bool", Value::boolean(true)},
      {"a.u64", {ValueType::kUint64, ValueType::kUint64, uint64_t{1} << 40}},
      {"a.i64", {ValueType::kInt64, ValueType::kInt64, -(int64_t{1} << 40)}},
      {"a.f64", {ValueType::kFloat64, ValueType::kFloat64, 0.25}},
      {"a.strings", Value::array(ValueType::kString, {"x", "", "\xc4\xa0"})},
      {"a.ints", Value::array(ValueType::kInt32, {1, -2, 3})},
      {"a.empty", Value::array(ValueType::kFloat32, nlohmann::json::array())},
  };
  at::manual_seed(5);
  const auto codes = at::randint(-1, 2, {3, 512}, at::kChar);
  const auto scales = at::rand({3, 2}) + 0.1;
  f.tensors.push_back(float_tensor("norm", at::randn({7})));
  f.tensors.push_back(float_tensor("embd", at::randn({5, 3}), GgmlType::kF16));
  f.tensors.push_back(ternary_tensor("w2", codes, scales, GgmlType::kTQ2_0));
  f.tensors.push_back(ternary_tensor("w1", codes, scales, GgmlType::kTQ1_0));
  return f;
}

std::string gguf_error(const std::string& bytes) {
  try {
    decode(bytes, "m.gguf");
  } catch (const bitqat::core::UserError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GgufBlocks, TQ2_0BitPositionsFollowGgml) {
  // Weight 128h + 32l + m sits in bits 2l of byte 32h + m, stored as code + 1.
  for (int i : {0, 1, 31, 32, 100, 127, 128, 200, 255}) {
    std::vector<int8_t> codes(kQK, -1);
    codes[static_cast<size_t>(i)] = 1;
    uint8_t out[kTQ2_0Bytes];
    encode_tq2_0_block(codes.data(), 1.0f, out);
    const int h = i / 128, l = (i % 128) / 32, m = i % 32;
    for (int b = 0; b < 64; ++b) EXPECT_EQ(out[b], b == 32 * h + m ? 2 << (2 * l) : 0) << "weight " << i;
    EXPECT_EQ(out[64], 0x00);  // fp16 1.0 = 0x3c00, little-endian
    EXPECT_EQ(out[65], 0x3c);
  }
}

TEST(GgufBlocks, TQ1_0ByteValuesFollowGgml) {
  std::vector<int8_t> codes(kQK, -1);
  uint8_t out[kTQ1_0Bytes];
  encode_tq1_0_block(codes.data(), 2.0f, out);
  for (int b = 0; b < 52; ++b) EXPECT_EQ(out[b], 0);
  // Weight 0 is the most significant trit of byte 0: v = 81 -> ceil(81 * 256 / 243) = 86.
  codes[0] = 0;
  encode_tq1_0_block(codes.data(), 2.0f, out);
  EXPECT_EQ(out[0], 86);
  // All trits 2: v = 242 -> 255; qh holds 4 trits scaled by 3: (80 * 3) -> ceil(240 * 256 / 243) = 253.
  std::fill(codes.begin(), codes.end(), int8_t{1});
  encode_tq1_0_block(codes.data(), 2.0f, out);
  EXPECT_EQ(out[0], 255);
  EXPECT_EQ(out[47], 255);
  EXPECT_EQ(out[48], 253);
  EXPECT_EQ(out[52], 0x00);  // fp16 2.0 = 0x4000
  EXPECT_EQ(out[53], 0x40);
}

TEST(GgufBlocks, BothTypesRoundTripEveryCodePattern) {
  for (unsigned seed = 1; seed < 40; ++seed) {
    const auto codes = random_codes(kQK, seed);
    int8_t back[kQK];
    float d = 0;
    uint8_t b2[kTQ2_0Bytes], b1[kTQ1_0Bytes];
    encode_tq2_0_block(codes.data(), 0.0312f, b2);
    decode_tq2_0_block(b2, back, &d);
    EXPECT_EQ(std::vector<int8_t>(back, back + kQK), codes);
    EXPECT_EQ(d, static_cast<float>(c10::Half(0.0312f)));
    encode_tq1_0_block(codes.data(), 0.0312f, b1);
    decode_tq1_0_block(b1, back, &d);
    EXPECT_EQ(std::vector<int8_t>(back, back + kQK), codes);
  }
  // Every value of one 5-trit byte.
  for (int v = 0; v < 243; ++v) {
    std::vector<int8_t> codes(kQK, 0);
    int r = v;
    for (int t = 4; t >= 0; --t, r /= 3) codes[static_cast<size_t>(32 * t)] = static_cast<int8_t>(r % 3 - 1);
    uint8_t b1[kTQ1_0Bytes];
    int8_t back[kQK];
    float d;
    encode_tq1_0_block(codes.data(), 1.0f, b1);
    decode_tq1_0_block(b1, back, &d);
    ASSERT_EQ(std::vector<int8_t>(back, back + kQK), codes) << v;
  }
}

TEST(GgufBlocks, RejectsCodesOutsideTernaryAndRowsOfPartialBlocks) {
  std::vector<int8_t> codes(kQK, 0);
  codes[3] = 2;
  uint8_t out[kTQ2_0Bytes];
  EXPECT_THROW(encode_tq2_0_block(codes.data(), 1.0f, out), std::invalid_argument);
  EXPECT_THROW(ternary_tensor("x", at::zeros({2, 384}, at::kChar), at::ones({2, 1}), GgmlType::kTQ2_0),
               std::invalid_argument);
  EXPECT_EQ(row_bytes(GgmlType::kTQ2_0, 512), 132);
  EXPECT_EQ(row_bytes(GgmlType::kTQ1_0, 512), 108);
}

TEST(GgufFile, RoundTripsMetadataAndTensors) {
  const auto f = sample_file();
  const auto bytes = encode(f);
  EXPECT_EQ(bytes.substr(0, 4), "GGUF");
  EXPECT_EQ(bytes.size() % 64, 0u);
  const auto g = decode(bytes, "mem");
  ASSERT_EQ(g.metadata.size(), f.metadata.size());
  for (size_t i = 0; i < f.metadata.size(); ++i) {
    EXPECT_EQ(g.metadata[i].first, f.metadata[i].first);
    EXPECT_EQ(g.metadata[i].second.type, f.metadata[i].second.type) << f.metadata[i].first;
    EXPECT_EQ(g.metadata[i].second.data, f.metadata[i].second.data) << f.metadata[i].first;
  }
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    EXPECT_EQ(g.tensors[i].name, f.tensors[i].name);
    EXPECT_EQ(g.tensors[i].ne, f.tensors[i].ne);
    EXPECT_EQ(g.tensors[i].type, f.tensors[i].type);
    EXPECT_EQ(g.tensors[i].data, f.tensors[i].data);
  }
  EXPECT_EQ(encode(g), bytes);
  // Both ternary encodings of the same codes dequantize to the same values: code * fp16(scale).
  at::manual_seed(5);
  const auto codes = at::randint(-1, 2, {3, 512}, at::kChar);
  const auto scales = at::rand({3, 2}) + 0.1;
  const auto want = codes.to(at::kFloat) * scales.to(at::kHalf).to(at::kFloat).repeat_interleave(256, 1);
  EXPECT_TRUE(dequantize(*g.tensor("w2")).equal(want));
  EXPECT_TRUE(dequantize(*g.tensor("w1")).equal(want));
  EXPECT_TRUE(ternary_codes(*g.tensor("w1")).equal(codes));
  EXPECT_EQ(dequantize(*g.tensor("embd")).sizes(), (std::vector<int64_t>{5, 3}));
}

TEST(GgufFile, RefusesMalformedFiles) {
  const auto bytes = encode(sample_file());
  EXPECT_NE(gguf_error("GGUX" + bytes.substr(4)).find("magic"), std::string::npos);
  auto v2 = bytes;
  v2[4] = 2;
  EXPECT_NE(gguf_error(v2).find("version 2"), std::string::npos);
  EXPECT_NE(gguf_error(bytes.substr(0, 40)).find("truncated"), std::string::npos);
  EXPECT_NE(gguf_error(bytes.substr(0, bytes.size() - 100)).find("past the end"), std::string::npos);
}

TEST(GgufFile, DimensionsWhoseProductOverflowsAreRefused) {
  // One F32 tensor of [2^16, 2^16, 2^16, 2^16] in a file of 16 KiB (so that each dimension passes the
  // per-dimension check, below the file's bit count): 2^64 elements, which wrap to 0 in 64 bits.
  File f;
  f.tensors.push_back(float_tensor("t", at::zeros({2})));
  auto bytes = encode(f);
  // The tensor info follows the header (4 + 4 + 8 + 8 bytes) and, with no metadata, starts with the
  // name (8-byte length + "t"), the dimension count and the dimensions.
  const size_t at = 24 + 8 + 1;
  const uint32_t n_dims = 4;
  std::string patched = bytes.substr(0, at);
  patched.append(reinterpret_cast<const char*>(&n_dims), 4);
  for (int d = 0; d < 4; ++d) {
    const uint64_t v = uint64_t{1} << 16;
    patched.append(reinterpret_cast<const char*>(&v), 8);
  }
  patched += bytes.substr(at + 4 + 8) + std::string(16384, '\0');
  const auto e = gguf_error(patched);
  EXPECT_NE(e.find("tensor t: dimensions [65536, 65536, 65536, 65536] need more bytes than the whole"),
            std::string::npos)
      << e;
}

TEST(GgufFile, GgufPythonPackageReadsAndDequantizesOurBytes) {
#ifndef BITQAT_PYTHON
  GTEST_SKIP() << "no Python configured (cmake -DPython3_EXECUTABLE=...)";
#else
  const auto dir = fs::temp_directory_path() / ("bitqat_gguf_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto f = sample_file();
  save((dir / "m.gguf").string(), f);
  NamedTensors expected;
  for (const auto& t : f.tensors) expected.emplace_back(t.name, dequantize(t));
  save_safetensors((dir / "want.safetensors").string(), expected);
  const std::string cmd = std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR + "/tests/checkpoints/gguf_check.py " +
                          (dir / "m.gguf").string() + " " + (dir / "want.safetensors").string();
  const auto [rc, out] = bitqat::testing::run_command(cmd);
  std::printf("%s", out.c_str());
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("4 tensors checked, 0 bad"), std::string::npos) << out;
  fs::remove_all(dir);
#endif
}

// Q2_0 / Q1_0 byte layouts, derived by hand from ggml-common.h (block_q2_0 {d; qs[16]}, block_q1_0
// {d; qs[16]}) and ggml-quants.c (dequantize_row_q2_0: q = (qs[j / 4] >> 2 (j % 4)) & 3, value
// (q - 1) d; dequantize_row_q1_0: bit (qs[j / 8] >> j % 8) & 1, value bit ? d : -d).
TEST(GgufBlocks, Q2_0BitPositionsFollowGgml) {
  for (int j : {0, 1, 3, 4, 17, 62, 63}) {
    std::vector<int8_t> codes(kQK2_0, -1);  // q = 0 everywhere
    codes[static_cast<size_t>(j)] = 2;      // q = 3
    uint8_t out[kQ2_0Bytes];
    encode_q2_0_block(codes.data(), 1.0f, out);
    EXPECT_EQ(out[0], 0x00);  // fp16 1.0 = 0x3c00, little-endian, first
    EXPECT_EQ(out[1], 0x3c);
    for (int b = 0; b < 16; ++b) EXPECT_EQ(out[2 + b], b == j / 4 ? 3 << (2 * (j % 4)) : 0) << "weight " << j;
  }
  std::vector<int8_t> zeros(kQK2_0, 0);  // q = 1 in every 2-bit field: 0b01010101
  uint8_t out[kQ2_0Bytes];
  encode_q2_0_block(zeros.data(), -2.0f, out);
  EXPECT_EQ(out[1], 0xc0);  // fp16 -2.0 = 0xc000
  for (int b = 0; b < 16; ++b) EXPECT_EQ(out[2 + b], 0x55);
}

TEST(GgufBlocks, Q1_0BitPositionsFollowGgml) {
  for (int j : {0, 1, 7, 8, 100, 127}) {
    std::vector<int8_t> codes(kQK1_0, -1);
    codes[static_cast<size_t>(j)] = 1;
    uint8_t out[kQ1_0Bytes];
    encode_q1_0_block(codes.data(), 0.5f, out);
    EXPECT_EQ(out[0], 0x00);  // fp16 0.5 = 0x3800
    EXPECT_EQ(out[1], 0x38);
    for (int b = 0; b < 16; ++b) EXPECT_EQ(out[2 + b], b == j / 8 ? 1 << (j % 8) : 0) << "weight " << j;
  }
}

TEST(GgufBlocks, Q2_0AndQ1_0RoundTripAndRefuseOtherCodes) {
  for (unsigned seed = 1; seed < 20; ++seed) {
    auto codes = random_codes(kQK2_0, seed);  // {-1, 0, 1}, plus a 2
    codes[seed % kQK2_0] = 2;
    int8_t back[kQK1_0];
    float d = 0;
    uint8_t b[kQ2_0Bytes];
    encode_q2_0_block(codes.data(), 0.0312f, b);
    decode_q2_0_block(b, back, &d);
    EXPECT_EQ(std::vector<int8_t>(back, back + kQK2_0), codes);
    EXPECT_EQ(d, static_cast<float>(c10::Half(0.0312f)));
    auto signs = random_codes(kQK1_0, seed);
    for (auto& s : signs) s = s >= 0 ? 1 : -1;
    encode_q1_0_block(signs.data(), 0.0312f, b);
    decode_q1_0_block(b, back, &d);
    EXPECT_EQ(std::vector<int8_t>(back, back + kQK1_0), signs);
  }
  std::vector<int8_t> bad(kQK1_0, 1);
  uint8_t out[kQ1_0Bytes];
  bad[5] = 0;  // a binary block has no zero
  EXPECT_THROW(encode_q1_0_block(bad.data(), 1.0f, out), std::invalid_argument);
  bad[5] = 3;
  EXPECT_THROW(encode_q2_0_block(bad.data(), 1.0f, out), std::invalid_argument);
  EXPECT_EQ(row_bytes(GgmlType::kQ2_0, 256), 4 * 18);
  EXPECT_EQ(row_bytes(GgmlType::kQ1_0, 256), 2 * 18);
  EXPECT_THROW(row_bytes(GgmlType::kQ1_0, 192), std::invalid_argument);
}

// fp32 -> fp16 scales: a value an fp16 cannot hold is refused instead of stored as infinity.
TEST(GgufBlocks, BlockScalesOutsideFp16AreRefused) {
  const auto codes = at::ones({1, 128}, at::kChar);
  EXPECT_NO_THROW(block_tensor("w", codes, at::full({1, 1}, 65504.0), GgmlType::kQ1_0));
  for (double s : {65600.0, std::nan(""), -1e30}) {
    try {
      block_tensor("w", codes, at::full({1, 1}, s), GgmlType::kQ1_0);
      ADD_FAILURE() << s;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("tensor w: block scale"), std::string::npos) << e.what();
    }
  }
}

TEST(GgufFile, Q2_0AndQ1_0TensorsDequantizeToCodeTimesHalfScale) {
  at::manual_seed(8);
  const auto codes2 = at::randint(-1, 3, {3, 128}, at::kChar);
  const auto codes1 = at::randint(0, 2, {3, 256}, at::kChar) * 2 - 1;
  const auto s2 = at::rand({3, 2}) + 0.1, s1 = at::rand({3, 2}) + 0.1;
  File f;
  f.tensors.push_back(block_tensor("q2", codes2, s2, GgmlType::kQ2_0));
  f.tensors.push_back(block_tensor("q1", codes1.to(at::kChar), s1, GgmlType::kQ1_0));
  const auto g = decode(encode(f), "mem");
  const auto half = [](const at::Tensor& x) { return x.to(at::kHalf).to(at::kFloat); };
  EXPECT_TRUE(dequantize(*g.tensor("q2")).equal(codes2.to(at::kFloat) * half(s2).repeat_interleave(64, 1)));
  EXPECT_TRUE(dequantize(*g.tensor("q1")).equal(codes1.to(at::kFloat) * half(s1).repeat_interleave(128, 1)));
  EXPECT_TRUE(block_codes(*g.tensor("q2")).equal(codes2));
  EXPECT_TRUE(block_scales(*g.tensor("q1")).equal(half(s1)));
  EXPECT_EQ(g.tensor("q2")->data.size(), 3u * 2 * 18);
}

// A source model's GGUF may hold tensor types decode() refuses: its metadata is still readable.
TEST(GgufFile, MetadataIsReadableWhateverTheTensorTypes) {
  File f;
  f.metadata = {{"tokenizer.ggml.model", Value::str("gpt2")},
                {"tokenizer.ggml.tokens", Value::array(ValueType::kString, {"a", "b"})}};
  f.tensors.push_back(float_tensor("t", at::zeros({32})));
  auto bytes = encode(f);
  // Patch the tensor's type to 16 (IQ2_XXS), which decode() does not read. Its info is the name
  // (uint64 length 1, "t"), n_dims (4 bytes), one dimension (8), then the type.
  const auto name_at = bytes.find(std::string("\x01\0\0\0\0\0\0\0t", 9));
  ASSERT_NE(name_at, std::string::npos);
  const uint32_t iq2_xxs = 16;
  std::memcpy(&bytes[name_at + 9 + 4 + 8], &iq2_xxs, 4);
  EXPECT_NE(gguf_error(bytes).find("ggml type IQ2_XXS (16) is not supported"), std::string::npos) << gguf_error(bytes);
  const auto meta = decode_metadata(bytes, "m.gguf");
  ASSERT_EQ(meta.size(), 2u);
  EXPECT_EQ(meta[0].first, "tokenizer.ggml.model");
  EXPECT_EQ(meta[1].second.data, nlohmann::json({"a", "b"}));
  EXPECT_THROW(decode_metadata(bytes.substr(0, 50), "m.gguf"), bitqat::core::UserError);
}

// llama.cpp's own C code reads our file: gguf_init_from_file, ggml_validate_row_data and ggml's
// reference dequantizers for every block type we write.
TEST(GgufFile, LlamaCppsGgmlReadsAndDequantizesEveryBlockType) {
  BITQAT_REQUIRE_LLAMA_CPP_OR_SKIP(BITQAT_PYTHON);
  const auto dir = fs::temp_directory_path() / ("bitqat_ggml_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto f = sample_file();
  at::manual_seed(9);
  f.tensors.push_back(block_tensor("q2", at::randint(-1, 3, {4, 192}, at::kChar), at::rand({4, 3}), GgmlType::kQ2_0));
  f.tensors.push_back(block_tensor("q1", (at::randint(0, 2, {4, 384}, at::kChar) * 2 - 1).to(at::kChar),
                                   at::rand({4, 3}) - 0.5, GgmlType::kQ1_0));
  save((dir / "m.gguf").string(), f);
  NamedTensors expected;
  for (const auto& t : f.tensors) expected.emplace_back(t.name, dequantize(t));
  save_safetensors((dir / "want.safetensors").string(), expected);
  const std::string cmd = std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR + "/tests/checkpoints/ggml_check.py " +
                          (dir / "m.gguf").string() + " " + (dir / "want.safetensors").string();
  const auto [rc, out] = bitqat::testing::run_command(cmd);
  std::printf("%s", out.c_str());
  EXPECT_EQ(rc, 0) << out << "\n(llama.cpp comes from launch/setup.sh --tests)";
  EXPECT_NE(out.find("6 tensors checked, 0 bad"), std::string::npos) << out;
  for (const char* line :
       {"ok q2 q2_0 valid True", "ok q1 q1_0 valid True", "ok w2 tq2_0 valid True", "ok w1 tq1_0 valid True"}) {
    EXPECT_NE(out.find(line), std::string::npos) << line;
  }
  fs::remove_all(dir);
}
