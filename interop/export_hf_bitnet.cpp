#include "interop/export_hf_bitnet.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/exportable.hpp"
#include "interop/llama_tensor_names.hpp"

namespace bitqat::interop {
namespace fs = std::filesystem;
namespace {

void check_linear(const std::string& name, const bitlinear::BitLinearImpl& l, bool want_norm) {
  LinearRequirements req;
  req.format = "hf-bitnet export";
  req.holder = "BitNetForCausalLM";
  req.granularity_reason = "transformers' BitLinear has one weight_scale per tensor (expected per_tensor)";
  req.learned_scales = false;
  req.learned_scale_reason =
      "transformers' BitLinear has one weight_scale per tensor, a learned scale is one per output row; export "
      "packed or gguf";
  req.per_token_8bit_activations = true;
  req.out_multiple = 4;
  req.out_reason = "the uint8 packing needs a multiple of 4";
  req.sub_norm = want_norm;
  check_exportable(name, l, req);
}

}  // namespace

at::Tensor pack_hf_ternary(const at::Tensor& codes_in) {
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.size(0) % 4 == 0, "pack_hf_ternary: expected codes [N, K], N % 4 == 0");
  const auto c = (codes_in.to(at::kInt) + 1).to(at::kByte).cpu();
  TORCH_CHECK(c.le(2).all().item<bool>(), "pack_hf_ternary: codes must be in {-1, 0, 1}");
  const int64_t rows = c.size(0) / 4;
  auto packed = at::zeros({rows, c.size(1)}, at::kByte);
  for (int64_t i = 0; i < 4; ++i) packed.bitwise_or_(c.narrow(0, i * rows, rows).bitwise_left_shift(2 * i));
  return packed;
}

at::Tensor unpack_hf_ternary(const at::Tensor& packed) {
  const int64_t rows = packed.size(0);
  auto codes = at::empty({4 * rows, packed.size(1)}, at::kChar);
  for (int64_t i = 0; i < 4; ++i) {
    codes.narrow(0, i * rows, rows).copy_(packed.bitwise_right_shift(2 * i).bitwise_and(3).to(at::kChar) - 1);
  }
  return codes;
}

void check_hf_bitnet_compatible(const models::BitLMImpl& lm) {
  const auto& c = lm.config;
  if (c.ffn != models::Ffn::kRelu2Glu && c.ffn != models::Ffn::kSwiglu) {
    throw core::UserError(fmt::format(
        "hf-bitnet export: model.ffn = {}: BitNetForCausalLM computes a gated FFN, down(act(gate x) * up x); "
        "expected relu2_glu (hidden_act relu2) or swiglu (hidden_act silu)",
        models::to_string(c.ffn)));
  }
  if (!c.sub_norm) {
    throw core::UserError(
        "hf-bitnet export: model.sub_norm = false: BitNetForCausalLM has attn_sub_norm and "
        "ffn_sub_norm; expected true");
  }
  // BitNetForCausalLM's SubLN norms sit inside the linears they precede (bitqat's <linear>.norm).
  std::set<std::string> normed;
  const auto tensors = llama_tensors(c);
  for (const auto& e : tensors) {
    if (e.row->presence == LlamaPresence::kSubNorm) normed.insert(e.bitqat.substr(0, e.bitqat.rfind('.')));
  }
  for (const auto& e : tensors) {
    if (e.row->role == TensorRole::kLinear) check_linear(e.bitqat, llama_linear(lm, e), normed.count(e.bitqat) > 0);
  }
}

void export_hf_bitnet(const models::BitLMImpl& lm, const std::string& out_dir) {
  check_new_output(out_dir);
  check_hf_bitnet_compatible(lm);
  const auto& c = lm.config;
  checkpoints::NamedTensors t;
  auto fp = [](const at::Tensor& x) { return x.detach().to(at::kCPU, at::kFloat).contiguous(); };
  for (const auto& e : llama_tensors(c)) {
    if (e.row->role != TensorRole::kLinear) {
      t.emplace_back(e.hf + ".weight", fp(llama_weight(lm, e)));
      continue;
    }
    const auto q = llama_linear(lm, e).quantized_weight();
    // transformers divides by weight_scale = 1 / gamma, stored as float32: gamma = 0 (or below
    // float32's 1 / FLT_MAX) has no finite reciprocal.
    const auto inv = (1.0 / q.scales.to(at::kDouble)).to(at::kFloat).reshape({1}).cpu();
    if (!std::isfinite(inv.item<float>())) {
      throw core::UserError(fmt::format(
          "hf-bitnet export: {} has absmean scale {}: its weight_scale 1 / {} does not fit a float32 (the layer's "
          "weights are all zero or vanishingly small)",
          e.hf, q.scales.item<double>(), q.scales.item<double>()));
    }
    t.emplace_back(e.hf + ".weight", pack_hf_ternary(q.codes));
    t.emplace_back(e.hf + ".weight_scale", inv);
  }

  const nlohmann::ordered_json config = {
      {"architectures", {"BitNetForCausalLM"}},
      {"model_type", "bitnet"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.dim},
      {"intermediate_size", c.ffn_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"head_dim", c.head_dim()},
      {"hidden_act", c.ffn == models::Ffn::kSwiglu ? "silu" : "relu2"},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"tie_word_embeddings", c.tie_embeddings},
      {"bos_token_id", nullptr},
      {"eos_token_id", nullptr},
      {"pad_token_id", nullptr},
      {"torch_dtype", "float32"},
      {"quantization_config",
       {{"quant_method", "bitnet"},
        {"linear_class", "bitlinear"},
        {"quantization_mode", "offline"},
        {"modules_to_not_convert", {"lm_head"}},
        {"use_rms_norm", false}}},
      {"bitqat", {{"exported_by", "bitqat export --format hf-bitnet"}}},
  };
  const std::string tmp = fmt::format("{}.tmp-{}", out_dir, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  core::write_file_atomic(tmp + "/config.json", config.dump(2) + "\n");
  checkpoints::save_safetensors(tmp + "/model.safetensors", t, {{"format", "pt"}});
  core::rename_dir_atomic(tmp, out_dir);
}

}  // namespace bitqat::interop
