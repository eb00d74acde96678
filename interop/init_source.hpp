// `init_from`: the weights a fresh run starts from instead of a random initialisation (fine-tuning a
// full-precision model into a ternary one). Read before step 0, never when resuming.
//
// PATH may be
//   - a Hugging Face Llama directory (config.json + model.safetensors or sharded safetensors with
//     model.safetensors.index.json), imported by interop/hf_llama;
//   - a llama-architecture GGUF file (interop/gguf_llama), dequantized to float32;
//   - a bitqat run directory (config.resolved.yaml + checkpoints/): its newest complete checkpoint;
//   - a bitqat checkpoint directory (RUN_DIR/checkpoints/step_XXXXXXXX);
//   - a safetensors file with bitqat tensor names (e.g. a checkpoint's model.safetensors).
// The model is always built from the config's `model:` section, never derived from the source: when
// the source says what model it holds (config.json, the run's config.resolved.yaml) every setting
// that changes the tensors or the function must agree, and the error lists each difference and,
// for Hugging Face and GGUF sources, the model section to use. Quantization settings may differ:
// that is the point.
//
// Memory: files are mapped, not read, and each tensor is converted (dequantized, cast to float32)
// only when it is copied into the model, then its pages are released: loading holds the model plus
// about one tensor, never a second copy of the weights.
#pragma once
#include <torch/nn/module.h>

#include <array>
#include <map>
#include <optional>
#include <string>

#include "core/schema.hpp"
#include "models/lm.hpp"
#include "models/state_dict.hpp"

namespace bitqat::interop {

// What init_from named (the names appear in messages).
enum class InitKind { kHfLlama, kGgufLlama, kBitqatRun, kBitqatCheckpoint, kSafetensors };
inline constexpr std::array<core::EnumName<InitKind>, 5> kInitKindNames = {
    {{InitKind::kHfLlama, "hf-llama"},
     {InitKind::kGgufLlama, "gguf-llama"},
     {InitKind::kBitqatRun, "bitqat-run"},
     {InitKind::kBitqatCheckpoint, "bitqat-checkpoint"},
     {InitKind::kSafetensors, "safetensors"}}};
inline const char* to_string(InitKind k) { return core::name_of(kInitKindNames, k); }

struct InitSource {
  InitKind kind = InitKind::kSafetensors;
  std::string path;                    // what init_from named
  std::string origin;                  // what the tensors are read from (for messages)
  models::LazyTensors tensors;         // bitqat names, read when loaded
  std::optional<models::LMConfig> lm;  // the source's model, when it says
};

// Recognises and reads PATH; UserErrors say what PATH was expected to be. `where` names the key
// (e.g. "configs/x.yaml:3: init_from").
InitSource read_init_source(const std::string& path, const std::string& where = "init_from");

// SubLN inserted on import (BitDistill, Wu et al. 2025, arXiv 2510.13998, section 3.1, its first
// stage): a BitLM whose config says model.sub_norm true takes a source without SubLN (a Llama). The
// source's tensors fill the model and the 2 x n_layers new RMSNorm weights before attn.o and ffn.down
// (layers.N.attn.o.norm.weight, layers.N.ffn.down.norm.weight) keep their initialisation, ones. The
// model is then not the source's function, even at lambda 0: each token's input of attn.o and
// ffn.down is scaled to unit RMS; training adapts the model to it.
// How a model of config `model` takes a source of config `source`: the settings that differ
// (LMConfig::differences), SubLN aside where the model inserts it, and the inserted norms' tensors
// (with ".weight", in model order; empty unless model has SubLN and source has not).
struct SourceFit {
  std::vector<std::string> differences;
  std::vector<std::string> inserted;
  // "; inserted SubLN: N new RMSNorm weights before attn.o and ffn.down, initialised to ones", or "".
  std::string note() const;
};
SourceFit fit_source(const models::LMConfig& model, const models::LMConfig& source);

// Reads PATH and copies every tensor into `model` (strict: same names and shapes, nothing left
// over, but for inserted SubLN norms, above); for a BitLM, checks the source's model config first.
// Returns a one-line description.
std::string init_model_from(const std::string& path, torch::nn::Module& model, const std::string& where = "init_from");
// The same for a source already opened.
std::string init_model_from(const InitSource& src, torch::nn::Module& model, const std::string& where);

}  // namespace bitqat::interop
