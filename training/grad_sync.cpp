#include "training/grad_sync.hpp"

namespace bitqat::training {

GradSync::GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap)
    : dist_(dist), model_(model) {
  (void)bucket_bytes;
  (void)overlap;
}

// One process: its parameters and gradients are already the global ones.
void GradSync::broadcast_parameters() {}
void GradSync::prepare() {}
void GradSync::finish() {}

}  // namespace bitqat::training
