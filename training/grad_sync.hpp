// Gradient averaging across data-parallel ranks. With one process it does nothing.
#pragma once
#include <torch/nn/module.h>

#include "training/distributed.hpp"

namespace bitqat::training {

class GradSync {
 public:
  GradSync(DistContext& dist, torch::nn::Module& model, int64_t bucket_bytes, bool overlap);
  void broadcast_parameters();
  void set_sync(bool sync) { sync_ = sync; }
  void prepare();
  void finish();

 private:
  DistContext& dist_;
  torch::nn::Module& model_;
  bool sync_ = true;
};

}  // namespace bitqat::training
