#include "models/generate.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>

namespace bitqat::models {
namespace {

// Decoding on a GPU: one token per step through a static cache, the step's kernels captured once in a
// CUDA graph and replayed for every later token (at batch 1 a step's many small launches cost more
// than its work). The first step after a (re)load runs eagerly: it warms every lazy set-up (kernel
// plans, handles, workspaces) before the capture. A capture that fails leaves eager steps.
class GraphedDecoder {
 public:
  GraphedDecoder(BitLMImpl& lm, int64_t capacity) : lm_(lm), capacity_(capacity) {
    token_ = at::zeros({1, 1}, at::TensorOptions().device(lm.embed->weight.device()).dtype(at::kLong));
  }
  void load(const KVCache& from) { lm_.load_static_cache(from, capacity_, cache_); }
  at::Tensor step(int64_t token) {
    token_.fill_(token);
    if (graph_) {
      graph_->replay();
      return logits_;
    }
    if (!warmed_ || !graphs_ok_) {
      warmed_ = true;
      return lm_.decode_step(token_, cache_).clone();
    }
    try {
      // Capture on a side stream (the default stream cannot be captured), ordered after the work
      // already queued on the current one, and the current one after the capture.
      const auto current = at::cuda::getCurrentCUDAStream();
      const auto stream = at::cuda::getStreamFromPool();
      at::cuda::CUDAEvent before;
      before.record(current);
      before.block(stream);
      {
        const c10::cuda::CUDAStreamGuard guard(stream);
        auto g = std::make_unique<at::cuda::CUDAGraph>();
        g->capture_begin();
        logits_ = lm_.decode_step(token_, cache_);
        g->capture_end();
        graph_ = std::move(g);
      }
      at::cuda::CUDAEvent after;
      after.record(stream);
      after.block(current);
      graph_->replay();  // the capture recorded the step; this runs it
      return logits_;
    } catch (const c10::Error& e) {
      graphs_ok_ = false;
      graph_.reset();
      spdlog::warn("generate: the decoding step could not be captured in a CUDA graph ({}); decoding without",
                   e.what_without_backtrace());
      return lm_.decode_step(token_, cache_).clone();
    }
  }

 private:
  BitLMImpl& lm_;
  int64_t capacity_;
  StaticKVCache cache_;
  at::Tensor token_, logits_;
  std::unique_ptr<at::cuda::CUDAGraph> graph_;
  bool warmed_ = false, graphs_ok_ = true;
};

}  // namespace

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
  std::optional<GraphedDecoder> graphed;
  if (device.is_cuda()) {
    graphed.emplace(lm, window);
    graphed->load(cache);
  }
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
      if (graphed) graphed->load(cache);  // the same buffers: the captured step stays valid
    } else if (graphed) {
      logits = graphed->step(next);
      ++cache.pos;  // the host's count of the static cache's tokens
    } else {
      logits = lm.forward(at::tensor({next}, at::kLong).unsqueeze(0).to(device), &cache).select(1, 0);
    }
  }
  if (was_training) lm.train();
  return out;
}

}  // namespace bitqat::models
