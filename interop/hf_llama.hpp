// Importing a full-precision Llama-architecture causal LM saved by Hugging Face (config.json plus
// model.safetensors, or shards listed by model.safetensors.index.json) into BitLM.
//
// Llama has no SubLN, so the imported model is built with sub_norm: false, and with ffn: swiglu.
// At lambda = 0 (or with quantization off) it computes exactly the Llama function: bitqat's RoPE is
// Hugging Face's rotate-half layout, so q and k need no permutation, and grouped-query heads are
// repeated the same way (each kv head serves n_heads / n_kv_heads consecutive query heads).
//
// Tensor names and shapes: interop/llama_tensor_names.hpp (Hugging Face -> bitqat; lm_head.weight is
// absent, or equal to the embedding, when tie_word_embeddings is true).
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "checkpoints/safetensors.hpp"
#include "models/lm.hpp"
#include "models/state_dict.hpp"

namespace bitqat::interop {

using models::BitLM;
using models::LMConfig;

// The BitLM config of a Llama config.json. Unsupported values (another model_type or activation,
// biases, rope_scaling, a head_dim other than hidden_size / num_attention_heads) are UserErrors
// naming `origin` and the key.
LMConfig lm_config_from_hf(const nlohmann::json& config, const std::string& origin);

// The same config as a one-line YAML `model:` section, for error messages and documentation.
std::string lm_config_yaml(const LMConfig& c);

// Renames Hugging Face tensors to bitqat names; each is converted to float32 only when read (one at
// a time while loading, so that no full copy in another dtype sits beside the model). Every tensor
// the model needs must be present with its shape; an unknown tensor is an error (rotary inv_freq
// buffers of old checkpoints are skipped). Errors name `origin` and the tensor. `release` (optional)
// is called with the source tensor once it was copied.
models::LazyTensors bitqat_tensors_from_hf(const std::map<std::string, at::Tensor>& hf, const LMConfig& c,
                                           const std::string& origin,
                                           const std::function<void(const at::Tensor&)>& release = {});

struct HFCheckpoint {
  LMConfig config;
  models::LazyTensors tensors;     // bitqat names, float32 when read
  std::vector<std::string> files;  // safetensors files mapped
};

// True when `dir` holds a config.json (the mark of a Hugging Face model directory).
bool is_hf_model_dir(const std::string& dir);

// Reads config.json and maps the weights (model.safetensors, or every shard named by
// model.safetensors.index.json); clear errors for a missing file, shard or tensor. The tensors read
// from the mapped files, and their pages are released once each was copied.
HFCheckpoint load_hf_llama(const std::string& dir);

// A BitLM with the checkpoint's weights; its linears are BitLinear with `spec` where selected by
// include / exclude (see bitlinear::name_selected), full precision elsewhere.
BitLM import_hf_llama(const std::string& dir, const bitlinear::QuantSpec& spec, const std::vector<std::string>& include,
                      const std::vector<std::string>& exclude);

}  // namespace bitqat::interop
