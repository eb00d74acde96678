#include "core/png.hpp"

#include <fmt/format.h>
#include <png.h>

#include <climits>
#include <cstring>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::core {

void write_png(const std::string& path, const Image8& im) {
  if (im.channels != 1 && im.channels != 3) {
    throw UserError(fmt::format("{}: a PNG holds 1 (grey) or 3 (RGB) channels here, got {}", path, im.channels));
  }
  if (im.width < 1 || im.height < 1 || im.width > INT_MAX || im.height > INT_MAX) {
    throw UserError(fmt::format("{}: image size {} x {} is not a PNG size", path, im.width, im.height));
  }
  const auto want = static_cast<size_t>(im.width) * static_cast<size_t>(im.height) * static_cast<size_t>(im.channels);
  if (im.pixels.size() != want) {
    throw UserError(fmt::format("{}: {} pixel bytes for {} x {} x {}", path, im.pixels.size(), im.width, im.height,
                                im.channels));
  }
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(im.width);
  image.height = static_cast<png_uint_32>(im.height);
  image.format = im.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  // Two calls: the first measures the encoded size, the second encodes into the buffer.
  png_alloc_size_t bytes = 0;
  if (!png_image_write_to_memory(&image, nullptr, &bytes, 0, im.pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    throw UserError(fmt::format("{}: libpng cannot encode the image: {}", path, msg));
  }
  std::string out(bytes, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &bytes, 0, im.pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    throw UserError(fmt::format("{}: libpng cannot encode the image: {}", path, msg));
  }
  out.resize(bytes);
  write_file_atomic(path, out);
}

}  // namespace bitqat::core
