// Autoregressive sampling from a BitLM with a KV cache: greedy at temperature 0, otherwise
// temperature and top-k sampling from a generator seeded by `seed` (deterministic).
#pragma once
#include <cstdint>
#include <vector>

#include "models/lm.hpp"

namespace bitqat::models {

// Returns prompt + new tokens. Past max_seq_len the context is cut to its last half and re-encoded.
// top_k 0 samples from the whole vocabulary. The model's train/eval mode is restored afterwards.
std::vector<int64_t> generate(BitLMImpl& lm, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              double temperature, int64_t top_k, uint64_t seed);
inline std::vector<int64_t> generate(BitLM& lm, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                     double temperature, int64_t top_k, uint64_t seed) {
  return generate(*lm, prompt, max_new_tokens, temperature, top_k, seed);
}

}  // namespace bitqat::models
