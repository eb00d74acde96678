// The `gguf` export: one GGUF v3 file that llama.cpp runs and that computes what bitqat trained.
//
// Architecture, chosen by the model (llama.cpp's graphs: src/models/bitnet.cpp, src/models/llama.cpp):
//   - `bitnet` for models with SubLN (model.sub_norm true): llama.cpp's bitnet graph is
//     attn_norm, q/k/v, NEOX (rotate-half) RoPE, attention, attn_sub_norm, attn_output, ffn_norm,
//     down(ffn_sub_norm(silu(gate x) * up x)), output_norm, LM head tied to token_embd. It builds a
//     SiLU-gated FFN whatever `bitnet.hidden_activation` says, so model.ffn must be swiglu; the
//     tensors need n_heads * head_dim = dim and tied embeddings.
//   - `llama` for models without SubLN (model.sub_norm false, e.g. a Hugging Face Llama fine-tuned
//     to ternary): swiglu FFN, an `output` tensor when the head is not tied. llama.cpp runs llama
//     with "normal" RoPE (consecutive pairs), so the rows of q and k are permuted per head from
//     bitqat's rotate-half layout as convert_hf_to_gguf.py's LlamaModel.permute does: new row
//     2j + r of a head = old row r * head_dim / 2 + j.
// relu2 / relu2_glu models are refused (llama.cpp would compute SiLU); ExportOptions::force_relu2
// writes a relu2_glu model as `bitnet` with hidden_activation relu2 anyway, for runtimes that honour it.
//
// Tensor types: every quantized BitLinear is a block type, each block's fp16 scale d = the layer's
// scale for that block (per tensor, per channel, or per group of a multiple of the block size), so
// d * code is bitqat's weight up to fp16 rounding of the scale:
//   TQ2_0 / TQ1_0: ternary (or binary) codes, blocks of 256; llama.cpp's CPU back end only.
//   Q2_0: ternary (or binary) codes, blocks of 64; llama.cpp's CPU, Metal and CUDA back ends.
//   Q1_0: binary codes (quant.weight.type binary), blocks of 128.
// Norms are F32; embeddings, an untied head and unquantized linears are ExportOptions::float_type
// (F32, exact, or F16, range-checked). Quantized layers need 8-bit per-token activations (llama.cpp
// quantizes activations to 8 bits per block of 256 (Q8_K, for TQ*) or 32 (Q8_0, for Q2_0 / Q1_0),
// so its logits are close to, not equal to, bitqat's).
//
// Tokenizer (interop/gguf_tokenizer.hpp): the source model's when the run came from one
// (ExportOptions::tokenizer_source, the run's init_from), else the byte-level tokenizer for
// vocabulary-256 models; anything else is refused.
#pragma once
#include <string>
#include <vector>

#include "checkpoints/gguf.hpp"
#include "models/lm.hpp"

namespace bitqat::interop {

enum class GgufArch { kBitnet, kLlama };
const char* to_string(GgufArch a);

struct GgufExportOptions {
  checkpoints::gguf::GgmlType type = checkpoints::gguf::GgmlType::kTQ2_0;      // TQ2_0, TQ1_0, Q2_0 or Q1_0
  checkpoints::gguf::GgmlType float_type = checkpoints::gguf::GgmlType::kF32;  // F32 or F16
  std::string name;                                                            // general.name
  bool force_relu2 = false;      // write a relu2_glu model although llama.cpp computes SiLU
  std::string tokenizer_source;  // the run's init_from ("" = none): where its tokenizer comes from
};

// What the export will write for this model, or a core::UserError naming the first model or
// quantization option (model.ffn, model.sub_norm, quant.weight.*, ...) it cannot express, and what
// to change. Also returns, in *warnings, what the caller must tell the user (force_relu2).
GgufArch check_gguf_compatible(const models::BitLMImpl& lm, const GgufExportOptions& o,
                               std::vector<std::string>* warnings = nullptr);

// The GGUF contents of a model.
checkpoints::gguf::File gguf_from_lm(const models::BitLMImpl& lm, const GgufExportOptions& o);

struct GgufExport {
  int64_t bytes;  // the file's size
  GgufArch arch;  // general.architecture
};

// Writes the file atomically; refuses an existing path (core::UserError, nothing written). Warnings
// as for check_gguf_compatible, which runs once.
GgufExport export_gguf(const models::BitLMImpl& lm, const std::string& out_path, const GgufExportOptions& o,
                       std::vector<std::string>* warnings = nullptr);

// The lower-case names ("tq2_0") of the types the export writes, in the type table's order
// (checkpoints/gguf_types.hpp): for quantized linears (codes = true: the block types written from
// integer codes, TQ1_0, TQ2_0, Q1_0, Q2_0) or for float tensors (codes = false: F32, F16).
std::vector<std::string> gguf_type_choices(bool codes);
// The CLI's --gguf-type and --gguf-float: the type of such a name; core::UserError naming the
// option, the value and the choices otherwise.
checkpoints::gguf::GgmlType parse_gguf_type(const std::string& s);
checkpoints::gguf::GgmlType parse_gguf_float_type(const std::string& s);

}  // namespace bitqat::interop
