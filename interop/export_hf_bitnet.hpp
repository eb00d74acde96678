// The `hf-bitnet` export: a directory that Hugging Face transformers loads as BitNetForCausalLM
// (model_type bitnet) with its offline-quantized BitLinear (quantization_config quant_method
// bitnet, linear_class bitlinear, quantization_mode offline):
//   config.json        sizes, rms_norm_eps, rope, hidden_act (relu2 for model.ffn relu2_glu, silu for
//                      swiglu: transformers' BitNetMLP is down(sub_norm(act(gate x) * up x))),
//                      tie_word_embeddings
//   model.safetensors  float32 embeddings and norms; each quantized linear as `weight` uint8
//                      [out/4, in] (4 codes per byte, see pack_hf_ternary) and `weight_scale`
//                      float32 [1] = 1 / gamma, because transformers' BitLinear divides the
//                      integer product by (activation scale * weight_scale)
// It needs what BitNetForCausalLM computes: ffn relu2_glu or swiglu, sub_norm, no biases, ternary per-tensor
// weights, 8-bit per-token activations, every block linear quantized, out features divisible by 4.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "models/lm.hpp"

namespace bitqat::interop {

// transformers' layout: codes [N, K] in {-1, 0, 1} (N % 4 == 0) -> uint8 [N/4, K] where byte
// [r, k] holds code[r + i * N/4, k] + 1 in bits 2i (i = 0..3).
at::Tensor pack_hf_ternary(const at::Tensor& codes);
at::Tensor unpack_hf_ternary(const at::Tensor& packed);  // -> int8 [4 * rows, K]

// Throws core::UserError naming the first model option that BitNetForCausalLM cannot express.
void check_hf_bitnet_compatible(const models::BitLMImpl& lm);

// Writes the directory atomically; `out_dir` must not exist.
void export_hf_bitnet(const models::BitLMImpl& lm, const std::string& out_dir);

}  // namespace bitqat::interop
