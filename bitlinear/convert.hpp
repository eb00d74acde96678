// Model surgery: swap torch::nn::Linear / Conv2d for BitLinear / BitConv2d by module-name
// patterns, and set the quantization lambdas of every Bit* layer in a tree.
#pragma once
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "bitlinear/bit_linear.hpp"

namespace bitqat::bitlinear {

// Glob match ('*' any run of characters including '.', '?' one character) of a dotted module
// name: a module is selected when it matches an include pattern (an empty list includes all)
// and no exclude pattern.
bool name_selected(const std::string& name, const std::vector<std::string>& include,
                   const std::vector<std::string>& exclude);

// Replaces every selected Linear and Conv2d in the tree rooted at `root` by a Bit* layer with the
// same shape, weights and bias copied, and `spec`. Returns the dotted names replaced (also logged).
// Children held in Sequential, ModuleList and ModuleDict are replaced in place; a module that keeps
// its own typed member handle must look its children up by name to see the swap.
std::vector<std::string> convert_linears(torch::nn::Module& root, const std::vector<std::string>& include,
                                         const std::vector<std::string>& exclude, const QuantSpec& spec);

// Switches every BitLinear with quantized weights in the tree to packed inference
// (BitLinear::to_packed); full-precision BitLinears stay as they are. Returns the dotted names packed
// (also logged); a layer whose quantization has no packed form is an std::invalid_argument naming it.
std::vector<std::string> pack_for_inference(torch::nn::Module& root);

// Sets lambda_w / lambda_a on every BitLinear and BitConv2d in the tree; returns how many.
int set_quant_lambdas(torch::nn::Module& root, double lambda_w, double lambda_a);

}  // namespace bitqat::bitlinear
