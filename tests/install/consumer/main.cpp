// A consumer of installed bitqat: one BitLinear forward and backward against hand-computed values,
// then a few training steps of a tiny LM through the trainer API. Prints "consumer: ok" and exits 0
// when every check holds; otherwise names the failed check and exits 1.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "bitlinear/bit_linear.hpp"
#include "training/config.hpp"
#include "training/trainer.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: FAILED %s\n", what.c_str());
    ++failures;
  }
}

bool near(double got, double want) { return std::fabs(got - want) <= 1e-5 * std::max(1.0, std::fabs(want)); }

// W = [[1, -0.2, -1.4, 0], [0.4, 0.6, -1, 1.2]]: per-tensor absmean gamma = 5.8 / 8 = 0.725, so the
// ternary codes round(W / gamma) clamped to [-1, 1] are [[1, 0, -1, 0], [1, 1, -1, 1]].
// x = [1.27, -0.5, 0.25, 1]: the 8-bit per-token scale is 127 / 1.27 = 100, the codes 127, -50, 25, 100.
// y = (W codes . x codes) * gamma / 100 = [102, 152] * 0.00725 = [0.7395, 1.102].
// Backward of sum(y), straight through both quantizers: dL/dx = the column sums of the dequantized
// weights, gamma * [2, 1, -2, 1]; dL/dW = the quantized x in every row.
void bit_linear_checks() {
  bitqat::bitlinear::BitLinear layer(bitqat::bitlinear::BitLinearOptions(4, 2));
  {
    torch::NoGradGuard no_grad;
    layer->weight.copy_(torch::tensor({{1.0f, -0.2f, -1.4f, 0.0f}, {0.4f, 0.6f, -1.0f, 1.2f}}));
  }
  const auto q = layer->quantized_weight();
  const auto codes = q.codes.to(torch::kInt64).flatten();
  const int64_t want_codes[] = {1, 0, -1, 0, 1, 1, -1, 1};
  for (int i = 0; i < 8; ++i) {
    const int64_t c = codes[i].item<int64_t>();
    expect(c >= -1 && c <= 1, "weight code " + std::to_string(i) + " in {-1, 0, 1}");
    expect(c == want_codes[i], "weight code " + std::to_string(i) + " = " + std::to_string(want_codes[i]));
  }
  expect(near(q.scales.flatten()[0].item<double>(), 0.725), "scale = mean |W| = 0.725");

  auto x = torch::tensor({{1.27f, -0.5f, 0.25f, 1.0f}}).requires_grad_(true);
  const auto y = layer->forward(x);
  expect(y.sizes() == torch::IntArrayRef({1, 2}), "output shape [1, 2]");
  expect(near(y[0][0].item<double>(), 0.7395), "y[0] = 0.7395, got " + std::to_string(y[0][0].item<double>()));
  expect(near(y[0][1].item<double>(), 1.102), "y[1] = 1.102, got " + std::to_string(y[0][1].item<double>()));

  y.sum().backward();
  const double want_dx[] = {2 * 0.725, 0.725, -2 * 0.725, 0.725};
  const double want_dw[] = {1.27, -0.5, 0.25, 1.0};
  for (int i = 0; i < 4; ++i) {
    expect(near(x.grad()[0][i].item<double>(), want_dx[i]), "dL/dx[" + std::to_string(i) + "]");
    for (int r = 0; r < 2; ++r)
      expect(near(layer->weight.grad()[r][i].item<double>(), want_dw[i]),
             "dL/dW[" + std::to_string(r) + "][" + std::to_string(i) + "]");
  }
  std::printf("consumer: BitLinear y = [%.6f, %.6f]\n", y[0][0].item<double>(), y[0][1].item<double>());
}

// Three steps of a tiny ternary byte-level LM on a text file written here, run directory in `dir`.
void trainer_checks(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const auto text = dir / "text.txt";
  {
    std::ofstream out(text);
    for (int i = 0; i < 200; ++i) out << "And the man said unto them, " << i % 13 << " times.\n";
  }
  const std::string yaml = R"(
run: {name: tiny, dir: )" + (dir / "runs").string() + R"(, seed: 7}
model: {kind: lm, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 64, max_seq_len: 32}
quant:
  weight: {type: ternary, granularity: per_channel}
  activation: {type: per_token, bits: 8}
data: {kind: text, path: )" + text.string() + R"(, seq_len: 32, val_fraction: 0.1}
optim:
  lr: {kind: warmup_cosine, peak: 0.01, warmup_steps: 1}
train: {steps: 3, batch_size: 4, log_every: 1, eval_every: 3, eval_batches: 1}
checkpoint: {every: 0}
device: {type: cpu, threads: 1}
)";
  const auto cfg = bitqat::training::Config::load_string(yaml, "consumer.yaml");
  const auto r = bitqat::training::train(cfg);
  expect(r.final_step == 3, "trained to step 3, got " + std::to_string(r.final_step));
  expect(std::isfinite(r.last_loss) && r.last_loss > 0, "a finite training loss");
  expect(r.last_val_loss.has_value(), "a validation loss at step 3");
  expect(std::filesystem::exists(std::filesystem::path(r.run_dir) / "metrics.jsonl"), "metrics.jsonl written");
  std::printf("consumer: trained %lld steps, loss %.4f\n", static_cast<long long>(r.final_step), r.last_loss);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s WORK_DIR\n", argv[0]);
    return 2;
  }
  try {
    bit_linear_checks();
    trainer_checks(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: FAILED with an exception: %s\n", e.what());
    return 1;
  }
  if (failures) return 1;
  std::printf("consumer: ok\n");
  return 0;
}
