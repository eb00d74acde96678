// core/png.hpp: images written with libpng's simplified writer read back with libpng's own
// low-level reader (png_read_png), byte for byte; shapes a PNG cannot hold are refused.
#include "core/png.hpp"

#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <filesystem>

#include "core/error.hpp"

namespace fs = std::filesystem;
using bitqat::core::Image8;

namespace {

struct Decoded {
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  std::vector<uint8_t> pixels;
};

// libpng's low-level reader, independent of the writer's simplified API.
Decoded decode(const std::string& path) {
  Decoded d;
  FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  if (!f) return d;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    ADD_FAILURE() << "libpng could not read " << path;
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(f);
    return d;
  }
  png_init_io(png, f);
  png_read_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  d.width = png_get_image_width(png, info);
  d.height = png_get_image_height(png, info);
  d.bit_depth = png_get_bit_depth(png, info);
  d.color_type = png_get_color_type(png, info);
  const auto rows = png_get_rows(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  for (png_uint_32 y = 0; y < d.height; ++y) d.pixels.insert(d.pixels.end(), rows[y], rows[y] + row_bytes);
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(f);
  return d;
}

class Png : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bitqat_png_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

}  // namespace

TEST_F(Png, GreyAndRgbRoundTripThroughLibpngsReader) {
  for (const int channels : {1, 3}) {
    Image8 im;
    im.width = 7;
    im.height = 5;
    im.channels = channels;
    for (int i = 0; i < 7 * 5 * channels; ++i) im.pixels.push_back(static_cast<uint8_t>((i * 37 + 11) % 256));
    const auto path = (dir_ / ("a" + std::to_string(channels) + ".png")).string();
    bitqat::core::write_png(path, im);
    const auto d = decode(path);
    EXPECT_EQ(d.width, 7u);
    EXPECT_EQ(d.height, 5u);
    EXPECT_EQ(d.bit_depth, 8);
    EXPECT_EQ(d.color_type, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB);
    EXPECT_EQ(d.pixels, im.pixels);
  }
  // Written atomically: no temporary file is left beside it.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
}

TEST_F(Png, ShapesAPngCannotHoldAreRefusedNamingTheFile) {
  const auto path = (dir_ / "bad.png").string();
  auto err = [&](const Image8& im) {
    try {
      bitqat::core::write_png(path, im);
    } catch (const bitqat::core::UserError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  Image8 two;
  two.width = two.height = 1;
  two.channels = 2;
  two.pixels = {1, 2};
  EXPECT_EQ(err(two), path + ": a PNG holds 1 (grey) or 3 (RGB) channels here, got 2");
  Image8 empty;
  EXPECT_EQ(err(empty), path + ": image size 0 x 0 is not a PNG size");
  Image8 short_buffer;
  short_buffer.width = short_buffer.height = 2;
  short_buffer.pixels = {1, 2, 3};
  EXPECT_EQ(err(short_buffer), path + ": 3 pixel bytes for 2 x 2 x 1");
  EXPECT_FALSE(fs::exists(path));
}
