#include "checkpoints/safetensors.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"

using namespace bitqat::checkpoints;

namespace {

std::string safetensors_error(const std::string& bytes) {
  try {
    decode_safetensors(bytes, "f.safetensors");
  } catch (const bitqat::core::UserError& e) {
    return e.what();
  }
  return "";
}

std::string with_header(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  out[0] = static_cast<char>(json.size());
  return out + json + data;
}

}  // namespace

TEST(Safetensors, ExactBytesOfATinyFile) {
  const auto bytes = encode_safetensors({{"a", at::tensor({1.0f, 2.0f})}}, {{"k", "v"}});
  const std::string json = R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const size_t padded = (json.size() + 7) / 8 * 8;  // 80 -> 80
  ASSERT_EQ(bytes.size(), 8 + padded + 8);
  EXPECT_EQ(static_cast<unsigned char>(bytes[0]), padded);
  for (int i = 1; i < 8; ++i) EXPECT_EQ(bytes[static_cast<size_t>(i)], 0);
  EXPECT_EQ(bytes.substr(8, json.size()), json);
  EXPECT_EQ(bytes.substr(8 + json.size(), padded - json.size()), std::string(padded - json.size(), ' '));
  float v[2];
  std::memcpy(v, bytes.data() + 8 + padded, 8);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], 2.0f);
}

TEST(Safetensors, RoundTripsEveryDtype) {
  NamedTensors in = {
      {"f64", at::randn({2, 3}, at::kDouble)},  {"f32", at::randn({4})},
      {"f16", at::randn({3}).to(at::kHalf)},    {"bf16", at::randn({2, 2}).to(at::kBFloat16)},
      {"i64", at::arange(5, at::kLong)},        {"i32", at::arange(3, at::kInt)},
      {"i16", at::arange(3, at::kShort)},       {"i8", at::tensor({-1, 0, 1}, at::kChar)},
      {"u8", at::tensor({0, 255}, at::kByte)},  {"bool", at::tensor({1, 0}, at::kByte).to(at::kBool)},
      {"scalar", at::tensor(3.5f).reshape({})}, {"empty", at::zeros({0, 4})},
  };
  const auto f = decode_safetensors(encode_safetensors(in, {{"format", "x"}}), "mem");
  ASSERT_EQ(f.tensors.size(), in.size());
  EXPECT_EQ(f.metadata.at("format"), "x");
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(f.tensors[i].first, in[i].first);
    EXPECT_EQ(f.tensors[i].second.scalar_type(), in[i].second.scalar_type()) << in[i].first;
    EXPECT_TRUE(f.tensors[i].second.equal(in[i].second)) << in[i].first;
  }
}

TEST(Safetensors, MalformedFilesAreRefusedWithTheReason) {
  EXPECT_EQ(safetensors_error("abc"),
            "f.safetensors: not a valid safetensors file: 3 bytes is shorter than the 8-byte header length");
  EXPECT_NE(safetensors_error(std::string("\xff\x00\x00\x00\x00\x00\x00\x00{}", 10))
                .find("header length 255 runs past the end"),
            std::string::npos);
  EXPECT_NE(safetensors_error(with_header("[1,2]", "")).find("the header is not a JSON object"), std::string::npos);
  EXPECT_NE(safetensors_error(with_header(R"({"a":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})", "x"))
                .find("tensor 'a' has unsupported dtype 'F8'"),
            std::string::npos);
  EXPECT_NE(safetensors_error(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"))
                .find("hold 4 bytes, its F32 shape needs 8"),
            std::string::npos);
  EXPECT_NE(safetensors_error(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "xxxx"))
                .find("past the 4 bytes of data (truncated file?)"),
            std::string::npos);
  EXPECT_NE(
      safetensors_error(
          with_header(
              R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
              "xxx"))
          .find("overlap or gap"),
      std::string::npos);
  EXPECT_NE(safetensors_error(with_header(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "xxxx"))
                .find("2 bytes of data follow the last tensor"),
            std::string::npos);
  EXPECT_NE(safetensors_error(with_header(R"({"a":{"dtype":"U8","shape":[2]}})", "xx"))
                .find("lacks dtype, shape or data_offsets"),
            std::string::npos);
}

TEST(Safetensors, ShapesWhoseElementCountOverflowsAreRefused) {
  // 2^32 x 2^32 elements: the product wraps to 0 in 64 bits, which matched the empty data range.
  EXPECT_EQ(safetensors_error(
                with_header(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "")),
            "f.safetensors: not a valid safetensors file: tensor 'a': shape [4294967296, 4294967296] of U8 needs more "
            "bytes than the whole 81-byte file");
  EXPECT_EQ(
      safetensors_error(with_header(R"({"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,0]}})", "")),
      "f.safetensors: not a valid safetensors file: tensor 'a': shape entry 9223372036854775808 is not an "
      "integer in [0, 2^63)");
}

// Saving streams the same bytes encode_safetensors builds; loading maps the file: the tensors view
// the mapping (no copy), keep it alive, and may be changed in place without changing the file.
TEST(Safetensors, SaveStreamsAndLoadViewsTheMappedFile) {
  const auto path = (std::filesystem::temp_directory_path() / ("bitqat_st_" + std::to_string(::getpid()))).string();
  const NamedTensors in = {
      {"w", at::randn({64, 32})}, {"b", at::arange(5, at::kLong)}, {"h", at::randn({3}).to(at::kHalf)}};
  save_safetensors(path, in, {{"format", "x"}});
  EXPECT_EQ(bitqat::core::read_file(path), encode_safetensors(in, {{"format", "x"}}));
  at::Tensor w;
  {
    const auto f = load_safetensors(path);
    ASSERT_TRUE(f.mapping);
    for (const auto& [name, t] : f.tensors) {
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      EXPECT_TRUE(p >= f.mapping->data() && p + t.nbytes() <= f.mapping->data() + f.mapping->size()) << name;
    }
    w = f.by_name().at("w");
    f.release(w);  // pages dropped; the values come back from the file
  }
  EXPECT_TRUE(w.equal(in[0].second));  // the tensor outlives the SafetensorsFile it came from
  w.mul_(2);                           // copy-on-write pages: the file is unchanged
  EXPECT_TRUE(load_safetensors(path).by_name().at("w").equal(in[0].second));
  std::filesystem::remove(path);
}
