// Model surgery: swap torch::nn::Linear / Conv2d for BitLinear / BitConv2d by module-name
// patterns, list the quantized layers, and set the quantization lambdas of every Bit* layer in a tree.
#pragma once
#include <torch/nn/module.h>

#include <string>
#include <utility>
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

// The dotted names of every BitLinear and BitConv2d with quantized weights in the tree, in module order.
std::vector<std::string> quantized_layer_names(const torch::nn::Module& root);

// The BitLinears of the tree with a learned weight scale (quant.weight.scale: learned), by the dotted
// name of that parameter ("<layer>.weight_scale"), in module order.
std::vector<std::pair<std::string, BitLinearImpl*>> learned_scales(torch::nn::Module& root);

// Sets lambda_w / lambda_a on every BitLinear and BitConv2d in the tree; returns how many.
int set_quant_lambdas(torch::nn::Module& root, double lambda_w, double lambda_a);

}  // namespace bitqat::bitlinear
