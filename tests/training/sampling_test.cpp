// `bitqat sample` (training/sampling.hpp): the grid layout by hand, the errors for bad requests, a
// PNG of the right size from a run, and the same images from a packed export as from its run at
// lambda 1.
#include "training/sampling.hpp"

#include <gtest/gtest.h>

#include "core/fs.hpp"
#include "interop/export_packed.hpp"
#include "tests/training/tiny_runs.hpp"
#include "training/run_loader.hpp"
#include "training/trainer.hpp"

namespace fs = std::filesystem;
using bitqat::testing::error_of;
using bitqat::training::Config;
using bitqat::training::SampleOptions;

namespace {

class SamplingTest : public bitqat::testing::TinyRunTest {
 protected:
  std::string train_dit(const std::string& name, const std::string& quant) {
    bitqat::training::train(
        Config::load_string(bitqat::testing::tiny_dit_yaml(runs(), name, 3, quant), name + ".yaml"));
    return runs() + "/" + name;
  }
};

}  // namespace

// Three 1 x 2 x 2 images, two per row, one pixel of padding: a 7 x 7 grid. Pixel value
// round((x + 1) / 2 * 255): -1 -> 0, 1 -> 255, 0.5 -> round(191.25) = 191, 3 is clamped to 255.
TEST(ImageGrid, LayoutAndPixelValuesByHand) {
  const auto images = at::tensor({-1.0, 1.0, 0.5, 3.0,  // image 0: rows (-1, 1), (0.5, 3)
                                  1.0, 1.0, 1.0, 1.0,   // image 1
                                  -1.0, -1.0, -1.0, -1.0},
                                 at::kFloat)
                          .reshape({3, 1, 2, 2});
  const auto g = bitqat::training::image_grid(images, 2, 1);
  EXPECT_EQ(g.width, 7);
  EXPECT_EQ(g.height, 7);
  EXPECT_EQ(g.channels, 1);
  auto px = [&](int64_t x, int64_t y) { return static_cast<int>(g.pixels[static_cast<size_t>(y * 7 + x)]); };
  EXPECT_EQ(px(0, 0), 128);  // padding
  EXPECT_EQ(px(1, 1), 0);
  EXPECT_EQ(px(2, 1), 255);
  EXPECT_EQ(px(1, 2), 191);
  EXPECT_EQ(px(2, 2), 255);
  EXPECT_EQ(px(3, 1), 128);  // between images 0 and 1
  EXPECT_EQ(px(4, 1), 255);  // image 1
  EXPECT_EQ(px(1, 4), 0);    // image 2, second row
  EXPECT_EQ(px(4, 4), 128);  // the empty fourth cell
}

TEST_F(SamplingTest, BadRequestsAreClearErrors) {
  const auto run = train_dit("dit", "weight: {type: none}\n  activation: {type: none}");
  SampleOptions o;
  o.out = (dir_ / "g.png").string();
  o.cls = 10;
  EXPECT_EQ(error_of([&] { bitqat::training::sample_run(run, o, at::kCPU); }),
            "--class 10: the model has classes 0..9 (or all)");
  o.cls = -1;
  EXPECT_EQ(error_of([&] { bitqat::training::sample_run(run, o, at::kCPU); }),
            "--class -1: the model has classes 0..9 (or all)");
  o.cls = 3;
  o.steps = 0;
  EXPECT_EQ(error_of([&] { bitqat::training::sample_run(run, o, at::kCPU); }),
            "--steps 0: expected at least 1 integration step");
  o.steps = 2;
  o.n = 0;
  EXPECT_EQ(error_of([&] { bitqat::training::sample_run(run, o, at::kCPU); }), "--n 0: expected at least 1 image");
  EXPECT_FALSE(fs::exists(o.out));
  // A language-model run is not a DiT.
  bitqat::training::train(Config::load_string(bitqat::testing::tiny_fp_yaml(runs(), text_, 2), "fp.yaml"));
  o.n = 1;
  EXPECT_EQ(error_of([&] { bitqat::training::sample_run(runs() + "/fp", o, at::kCPU); }),
            runs() + "/fp: a model.kind lm run; sample needs a diffusion transformer (model.kind dit)");
  EXPECT_FALSE(fs::exists(o.out));
}

// --class all, n 2: ten rows of two 28 x 28 images with 2 pixels of padding: 62 x 302 pixels.
TEST_F(SamplingTest, WritesAGridPng) {
  const auto run = train_dit("fp", "weight: {type: none}\n  activation: {type: none}");
  SampleOptions o;
  o.n = 2;
  o.steps = 2;
  o.out = (dir_ / "out" / "grid.png").string();
  const auto r = bitqat::training::sample_run(run, o, at::kCPU);
  EXPECT_EQ(r.images, 20);
  EXPECT_EQ(r.rows, 10);
  EXPECT_EQ(r.columns, 2);
  EXPECT_EQ(r.width, 62);
  EXPECT_EQ(r.height, 302);
  EXPECT_EQ(r.step, 3);
  const auto png = bitqat::core::read_file(o.out);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  // One class: up to 10 per row.
  o.cls = 4;
  o.n = 13;
  const auto one = bitqat::training::sample_run(run, o, at::kCPU);
  EXPECT_EQ(one.rows, 2);
  EXPECT_EQ(one.columns, 10);
}

// A run trained with train.ema samples from the average of its weights; use_ema false (--no-ema)
// from the raw weights, which give other images.
TEST_F(SamplingTest, SamplesTheAverageOfTheWeights) {
  bitqat::training::train(Config::load_string(
      bitqat::testing::tiny_dit_yaml(runs(), "ema", 3, "weight: {type: none}\n  activation: {type: none}"), "ema.yaml",
      {"train.ema.decay=0.5"}));
  SampleOptions o;
  o.n = 1;
  o.steps = 2;
  o.out = (dir_ / "out" / "ema.png").string();
  const auto avg = bitqat::training::sample_run(runs() + "/ema", o, at::kCPU);
  EXPECT_TRUE(avg.ema);
  o.use_ema = false;
  o.out = (dir_ / "out" / "raw.png").string();
  const auto raw = bitqat::training::sample_run(runs() + "/ema", o, at::kCPU);
  EXPECT_FALSE(raw.ema);
  EXPECT_NE(bitqat::core::read_file((dir_ / "out" / "ema.png").string()), bitqat::core::read_file(o.out));
}

// The packed export holds the block linears as 2-bit codes; on the CPU it computes exactly what the
// run computes at lambda 1 (bitlinear/quantized_linear.hpp), so the two PNGs are the same bytes. Also
// for binary weights, which the packed layout holds as codes -1 and +1.
TEST_F(SamplingTest, PackedExportSamplesTheSameImages) {
  for (const std::string w : {"ternary", "binary"}) {
    const auto run =
        train_dit(w, "weight: {type: " + w + ", granularity: per_channel}\n  activation: {type: per_token, bits: 8}");
    auto loaded = bitqat::training::load_run(run, at::kCPU);
    const auto packed = runs() + "/" + w + "-packed";
    const auto stats =
        bitqat::interop::export_packed(loaded.task->module(), bitqat::core::read_file(run + "/config.resolved.yaml"),
                                       loaded.checkpoint, loaded.step, packed, run);
    EXPECT_EQ(stats.layers, 5);  // adaln, qkv, proj, fc1, fc2
    SampleOptions o;
    o.n = 3;
    o.steps = 2;
    o.fully_quantized = true;
    o.out = (dir_ / (w + "_run.png")).string();
    bitqat::training::sample_run(run, o, at::kCPU);
    o.fully_quantized = false;
    o.out = (dir_ / (w + "_packed.png")).string();
    bitqat::training::sample_run(packed, o, at::kCPU);
    EXPECT_EQ(bitqat::core::read_file((dir_ / (w + "_run.png")).string()),
              bitqat::core::read_file((dir_ / (w + "_packed.png")).string()))
        << w;
  }
}
