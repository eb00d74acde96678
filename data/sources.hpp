// Constructors of the concrete data sources, used by make_source (data/source.cpp), and the pieces
// they share.
#pragma once
#include <memory>

#include "data/source.hpp"

namespace bitqat::data {

std::unique_ptr<Source> make_text_source(const DataConfig& cfg, uint64_t seed, Split split);
std::unique_ptr<Source> make_shard_source(const DataConfig& cfg, uint64_t seed, Split split);
std::unique_ptr<Source> make_fashion_mnist_source(const DataConfig& cfg, uint64_t seed, Split split);

// The argument checks of Source::train_batch (std::invalid_argument on a caller's bug).
void check_batch_args(int64_t step, int micro, int rank, int world, int64_t batch_size, int accum);
// Likewise for Source::val_batches: batch_size >= 1, max_batches >= 0.
void check_val_args(int64_t batch_size, int64_t max_batches);
// min(batch_size * max_batches, available) without overflowing.
int64_t capped_items(int64_t batch_size, int64_t max_batches, int64_t available);

// IDX files (gzip-compressed, as Debian ships Fashion-MNIST); UserError naming the file for a wrong
// magic number (2051 images, 2049 labels), wrong dimensions or a size that does not match them.
at::Tensor read_idx_images(const std::string& gz_path);  // uint8 [N, 28, 28]
at::Tensor read_idx_labels(const std::string& gz_path);  // int64 [N]

}  // namespace bitqat::data
