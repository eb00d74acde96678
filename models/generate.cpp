#include "models/generate.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <limits>
#include <stdexcept>

namespace bitqat::models {

std::vector<int64_t> generate(BitLMImpl& lm, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              double temperature, int64_t top_k, uint64_t seed) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt is empty");
  if (max_new_tokens < 0 || temperature < 0.0 || top_k < 0) {
    throw std::invalid_argument(
        fmt::format("generate: max_new_tokens = {}, temperature = {}, top_k = {}: expected values >= 0", max_new_tokens,
                    temperature, top_k));
  }
  for (const auto t : prompt) {
    if (t < 0 || t >= lm.config.vocab_size) {
      throw std::invalid_argument(
          fmt::format("generate: prompt token {} is outside the vocabulary [0, {})", t, lm.config.vocab_size));
    }
  }
  at::NoGradGuard no_grad;
  const bool was_training = lm.is_training();
  lm.eval();
  const auto device = lm.embed->weight.device();
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<int64_t> out = prompt;
  const int64_t window = lm.config.max_seq_len;
  KVCache cache;
  // Encode the (last window of the) prompt.
  auto encode = [&](int64_t keep) {
    cache = KVCache{};
    const std::vector<int64_t> ctx(out.end() - keep, out.end());
    const auto t = at::tensor(ctx, at::kLong).unsqueeze(0).to(device);
    return lm.forward(t, &cache).select(1, keep - 1);
  };
  auto logits = encode(std::min<int64_t>(static_cast<int64_t>(out.size()), window));
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    auto l = logits.squeeze(0).to(at::kDouble).cpu();
    int64_t next;
    if (temperature <= 0.0) {
      next = l.argmax().item<int64_t>();
    } else {
      // Subtract the maximum before dividing: any positive temperature, however small (1e-40), gives
      // finite scaled logits (0 for the best token, <= 0 elsewhere), so softmax never sees inf - inf.
      l = (l - l.max()) / temperature;
      if (top_k > 0 && top_k < l.size(0)) {
        const auto kth = std::get<0>(l.topk(top_k)).min();
        l = at::where(l < kth, at::full_like(l, -std::numeric_limits<double>::infinity()), l);
      }
      next = at::multinomial(at::softmax(l, -1), 1, false, gen).item<int64_t>();
    }
    out.push_back(next);
    if (cache.pos >= window) {
      logits = encode(window / 2);
    } else {
      logits = lm.forward(at::tensor({next}, at::kLong).unsqueeze(0).to(device), &cache).select(1, 0);
    }
  }
  if (was_training) lm.train();
  return out;
}

}  // namespace bitqat::models
