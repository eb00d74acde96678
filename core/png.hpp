// Writing PNG images through libpng (its "simplified" API, libpng 1.6): 8-bit grey or RGB pixels,
// written atomically (bitqat sample's grids).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bitqat::core {

struct Image8 {
  int64_t width = 0;
  int64_t height = 0;
  int channels = 1;             // 1 (grey) or 3 (RGB)
  std::vector<uint8_t> pixels;  // row-major, channels interleaved: height * width * channels bytes
};

// Encodes `image` as an 8-bit PNG and writes it with core::write_file_atomic. Throws UserError naming
// the path for a shape libpng cannot hold (channels other than 1 or 3, a size of 0 or over 2^31 - 1,
// a pixel buffer of the wrong length) or an encoder or write failure.
void write_png(const std::string& path, const Image8& image);

}  // namespace bitqat::core
