// Autoregressive sampling from a BitLM with a KV cache: greedy at temperature 0, otherwise
// temperature and top-k sampling from a generator seeded by `seed` (deterministic).
#pragma once
#include <cstdint>
#include <vector>

#include "models/lm.hpp"

namespace bitqat::models {

// Returns prompt + new tokens. Past max_seq_len the context is cut to its last half and re-encoded.
std::vector<int64_t> generate(BitLMImpl& lm, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              double temperature, int64_t top_k, uint64_t seed);

}  // namespace bitqat::models
