#include "training/sampling.hpp"

#include <fmt/format.h>

#include <cmath>
#include <memory>

#include "core/error.hpp"
#include "models/dit.hpp"
#include "training/run_loader.hpp"

namespace bitqat::training {

core::Image8 image_grid(const at::Tensor& images, int64_t columns, int64_t pad) {
  TORCH_CHECK(images.dim() == 4 && images.size(0) >= 1 && columns >= 1 && pad >= 0,
              "image_grid: expected [N >= 1, C, H, W] images, columns >= 1 and pad >= 0, got ", images.sizes(), ", ",
              columns, ", ", pad);
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t cols = std::min(columns, N), rows = (N + cols - 1) / cols;
  core::Image8 g;
  g.channels = static_cast<int>(C);
  g.width = cols * (W + pad) + pad;
  g.height = rows * (H + pad) + pad;
  g.pixels.assign(static_cast<size_t>(g.width * g.height * C), 128);
  // [N, H, W, C] bytes, then each image copied into its cell row by row.
  const auto bytes = ((images.detach().to(at::kCPU, at::kDouble).clamp(-1, 1) + 1) * (255.0 / 2))
                         .round()
                         .to(at::kByte)
                         .permute({0, 2, 3, 1})
                         .contiguous();
  const auto* src = bytes.data_ptr<uint8_t>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t x0 = pad + (i % cols) * (W + pad), y0 = pad + (i / cols) * (H + pad);
    for (int64_t y = 0; y < H; ++y) {
      std::copy_n(src + ((i * H + y) * W) * C, W * C, g.pixels.begin() + ((y0 + y) * g.width + x0) * C);
    }
  }
  return g;
}

SampleResult sample_run(const std::string& run_dir, const SampleOptions& o, const at::Device& device) {
  if (o.n < 1) throw core::UserError(fmt::format("--n {}: expected at least 1 image", o.n));
  if (o.steps < 1) throw core::UserError(fmt::format("--steps {}: expected at least 1 integration step", o.steps));
  if (!std::isfinite(o.cfg)) throw core::UserError(fmt::format("--cfg {}: expected a finite guidance weight", o.cfg));
  if (o.out.empty()) throw core::UserError("--out: expected the PNG file to write");
  auto run = load_run(run_dir, device, o.use_ema);
  auto dit = std::dynamic_pointer_cast<models::BitDiTImpl>(run.task->module_ptr());
  if (!dit) {
    throw core::UserError(fmt::format("{}: a model.kind {} run; sample needs a diffusion transformer (model.kind dit)",
                                      run_dir, models::to_string(run.cfg.model.kind)));
  }
  const auto& c = dit->config;
  if (o.cls && (*o.cls < 0 || *o.cls >= c.num_classes)) {
    throw core::UserError(fmt::format("--class {}: the model has classes 0..{} (or all)", *o.cls, c.num_classes - 1));
  }
  if (c.channels != 1 && c.channels != 3) {
    throw core::UserError(fmt::format("{}: the model makes {}-channel images; a PNG grid holds 1 (grey) or 3 (RGB)",
                                      run_dir, c.channels));
  }
  if (o.fully_quantized) set_run_lambdas(run, 1.0, 1.0);
  // --class all: one row per class; one class: up to 10 images per row.
  const auto labels =
      o.cls ? at::full({o.n}, *o.cls, at::kLong) : at::arange(c.num_classes, at::kLong).repeat_interleave(o.n);
  const int64_t columns = o.cls ? std::min<int64_t>(o.n, 10) : o.n;
  const auto images = models::sample_images(*dit, labels, o.steps, o.cfg, o.solver, o.seed);
  const auto grid = image_grid(images, columns);
  core::write_png(o.out, grid);
  SampleResult r;
  r.checkpoint = run.checkpoint;
  r.step = run.step;
  r.lambda_w = run.lambda_w;
  r.lambda_a = run.lambda_a;
  r.ema = run.ema;
  r.ema_in_checkpoint = run.ema_in_checkpoint;
  r.images = labels.size(0);
  r.columns = std::min(columns, r.images);
  r.rows = (r.images + r.columns - 1) / r.columns;
  r.width = grid.width;
  r.height = grid.height;
  return r;
}

}  // namespace bitqat::training
