// `bitqat sample`: class-conditional images from a DiT run directory or its packed export, integrated
// from noise by models/flow.hpp's solvers with classifier-free guidance, written as one PNG grid.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "core/png.hpp"
#include "models/flow.hpp"

namespace bitqat::training {

struct SampleOptions {
  int64_t n = 8;               // images per class (--class all) or in total (one class)
  std::optional<int64_t> cls;  // nullopt: every class, one grid row each
  int64_t steps = 10;
  double cfg = 2.0;
  models::Solver solver = models::Solver::kHeun;
  uint64_t seed = 1;
  bool fully_quantized = false;  // lambda 1 instead of the checkpoint's lambdas
  bool use_ema = true;           // the checkpoint's average of the weights when it holds one (train.ema)
  std::string out;               // the PNG to write
};

struct SampleResult {
  std::string checkpoint;  // where the weights came from
  int64_t step = 0;
  double lambda_w = 1.0, lambda_a = 1.0;
  bool ema = false;  // the weights were the checkpoint's average
  bool ema_in_checkpoint = false;
  int64_t images = 0, rows = 0, columns = 0;
  int64_t width = 0, height = 0;  // of the PNG
};

// Throws UserError for a run that is not a DiT (naming its model.kind), a class outside
// [0, num_classes) (naming the range), n or steps below 1, a non-finite guidance weight, and images
// whose channel count a PNG cannot hold (1 and 3 can).
SampleResult sample_run(const std::string& run_dir, const SampleOptions& options, const at::Device& device);

// A grid of images [N, C, H, W] in [-1, 1] (values outside are clamped): `columns` per row, `pad`
// pixels of grey 128 around and between them; pixel value round((x + 1) / 2 * 255).
core::Image8 image_grid(const at::Tensor& images, int64_t columns, int64_t pad = 2);

}  // namespace bitqat::training
