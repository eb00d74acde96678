// Constructors of the concrete data sources, used by make_source (data/source.cpp).
#pragma once
#include <memory>

#include "data/source.hpp"

namespace bitqat::data {

std::unique_ptr<Source> make_text_source(const DataConfig& cfg, uint64_t seed);
std::unique_ptr<Source> make_shard_source(const DataConfig& cfg, uint64_t seed);
std::unique_ptr<Source> make_fashion_mnist_source(const DataConfig& cfg, uint64_t seed);

}  // namespace bitqat::data
