#include "models/cnn.hpp"

#include <gtest/gtest.h>

using namespace bitqat::models;
using S = std::vector<std::string>;

TEST(BitCNN, ShapesAndFullPrecisionEndsByDefault) {
  at::manual_seed(5);
  BitCNN net(CNNConfig{}, bitqat::bitlinear::QuantSpec{}, S{"*"}, S{});
  EXPECT_EQ(net->forward(at::rand({4, 1, 28, 28})).sizes(), (std::vector<int64_t>{4, 10}));
  using bitqat::bitlinear::WeightQuant;
  EXPECT_EQ(net->conv1->options.quant.weight.type, WeightQuant::kNone);
  EXPECT_EQ(net->conv2->options.quant.weight.type, WeightQuant::kTernary);
  EXPECT_EQ(net->fc1->options.quant.weight.type, WeightQuant::kTernary);
  EXPECT_EQ(net->fc2->options.quant.weight.type, WeightQuant::kNone);
  CNNConfig all;
  all.quantize_first = all.quantize_last = true;
  BitCNN q(all, bitqat::bitlinear::QuantSpec{}, S{"*"}, S{"fc1"});
  EXPECT_EQ(q->conv1->options.quant.weight.type, WeightQuant::kTernary);
  EXPECT_EQ(q->fc1->options.quant.weight.type, WeightQuant::kNone);
  EXPECT_EQ(q->fc2->options.quant.weight.type, WeightQuant::kTernary);
  const auto loss = net->loss(at::rand({4, 1, 28, 28}), at::tensor({0, 1, 2, 3}, at::kLong));
  loss.backward();
  EXPECT_GT(net->conv2->weight.grad().abs().sum().item<float>(), 0.0f);
}
