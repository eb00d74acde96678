// What a Bit* layer quantizes and how (weights and activations), shared by BitLinear, BitConv2d, the
// models and the config; its types are in quantizers.hpp.
#pragma once
#include "bitlinear/quantizers.hpp"

namespace bitqat::bitlinear {

struct QuantSpec {
  WeightQuantSpec weight;  // weight.type == kNone: weights stay full precision
  ActQuantSpec act;        // act.type == kNone: activations stay full precision

  // Weights and activations both unquantized: a BitLinear with this spec is exactly a linear layer.
  static QuantSpec full_precision() {
    QuantSpec s;
    s.weight.type = WeightQuant::kNone;
    s.act.type = ActQuant::kNone;
    return s;
  }
};

// Throws std::invalid_argument when lambda is outside [0, 1]; `what` names the caller and the value.
void check_lambda(double lambda, const char* what);

}  // namespace bitqat::bitlinear
