// The hf-bitnet export: transformers' packing layout, clear refusals, and the real check: Hugging
// Face transformers loads the directory as BitNetForCausalLM and computes bitqat's logits.
#include "interop/export_hf_bitnet.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;
using namespace bitqat;

namespace {

models::LMConfig tiny_bitnet() {
  models::LMConfig c;
  c.vocab_size = 96;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn = bitqat::models::Ffn::kRelu2Glu;
  c.ffn_dim = 128;
  c.max_seq_len = 32;
  c.init_std = 0.08;
  return c;
}

models::BitLM make_lm_random_norms(const models::LMConfig& c, bitlinear::QuantSpec spec = {}) {
  models::BitLM lm(c, spec, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
  at::NoGradGuard g;
  for (auto& p : lm->named_parameters()) {  // norms away from 1 so that a misplaced norm shows
    if (p.key().find("norm") != std::string::npos) p.value().copy_(1.0 + 0.2 * at::randn_like(p.value()));
  }
  lm->eval();
  return lm;
}

std::string hf_bitnet_error(const models::BitLM& lm) {
  try {
    interop::check_hf_bitnet_compatible(*lm);
  } catch (const core::UserError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(HfBitnetExport, PackingFollowsTransformersLayout) {
  at::manual_seed(1);
  const auto codes = at::randint(-1, 2, {8, 5}, at::kChar);
  const auto p = interop::pack_hf_ternary(codes);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{2, 5}));
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t k = 0; k < 5; ++k) {
      int want = 0;
      for (int i = 0; i < 4; ++i) want |= (codes[r + 2 * i][k].item<int>() + 1) << (2 * i);
      EXPECT_EQ(p[r][k].item<int>(), want);
    }
  }
  EXPECT_TRUE(interop::unpack_hf_ternary(p).equal(codes));
}

TEST(HfBitnetExport, RefusesWhatBitNetForCausalLMCannotExpress) {
  auto c = tiny_bitnet();
  c.ffn = bitqat::models::Ffn::kRelu2;
  EXPECT_NE(hf_bitnet_error(make_lm_random_norms(c)).find("model.ffn = relu2"), std::string::npos);
  c.ffn = bitqat::models::Ffn::kSwiglu;
  EXPECT_EQ(hf_bitnet_error(make_lm_random_norms(c)), "");
  c = tiny_bitnet();
  c.sub_norm = false;
  EXPECT_NE(hf_bitnet_error(make_lm_random_norms(c)).find("model.sub_norm"), std::string::npos);
  bitlinear::QuantSpec per_channel;
  per_channel.weight.granularity = bitlinear::Granularity::kPerChannel;
  EXPECT_NE(hf_bitnet_error(make_lm_random_norms(tiny_bitnet(), per_channel)).find("per_channel"), std::string::npos);
  bitlinear::QuantSpec learned = per_channel;
  learned.weight.scale = bitlinear::ScaleSource::kLearned;
  const auto e = hf_bitnet_error(make_lm_random_norms(tiny_bitnet(), learned));
  EXPECT_NE(e.find("has quant.weight.scale = learned: transformers' BitLinear has one weight_scale per tensor"),
            std::string::npos)
      << e;
  EXPECT_EQ(hf_bitnet_error(make_lm_random_norms(tiny_bitnet())), "");
}

// weight_scale = 1 / gamma is stored as float32: a layer whose weights are all zero has none.
TEST(HfBitnetExport, AWeightScaleAFloat32CannotHoldIsRefused) {
  auto lm = make_lm_random_norms(tiny_bitnet());
  {
    at::NoGradGuard g;
    lm->blocks[0]->attn->v->weight.zero_();
  }
  const auto dir = fs::temp_directory_path() / ("bitqat_hf_range_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::string e;
  try {
    interop::export_hf_bitnet(*lm, (dir / "hf").string());
  } catch (const core::UserError& err) {
    e = err.what();
  }
  EXPECT_EQ(e,
            "hf-bitnet export: model.layers.0.self_attn.v_proj has absmean scale 0: its weight_scale 1 / 0 does "
            "not fit a float32 (the layer's weights are all zero or vanishingly small)");
  EXPECT_FALSE(fs::exists(dir / "hf"));
  fs::remove_all(dir);
}

TEST(HfBitnetExport, TransformersLoadsItAsBitNetWithMatchingLogits) {
#ifndef BITQAT_PYTHON
  GTEST_SKIP() << "no Python configured (cmake -DPython3_EXECUTABLE=...)";
#else
  // swiglu is hidden_act silu: transformers' BitNetMLP applies ACT2FN[hidden_act] to the gate.
  for (const auto ffn : {bitqat::models::Ffn::kRelu2Glu, bitqat::models::Ffn::kSwiglu}) {
    at::manual_seed(7);
    auto c = tiny_bitnet();
    c.ffn = ffn;
    auto lm = make_lm_random_norms(c);
    const auto tokens = at::randint(0, 96, {2, 20}, at::kLong);
    at::Tensor logits;
    {
      at::NoGradGuard g;
      logits = lm->forward(tokens);
    }
    const auto dir = fs::temp_directory_path() / ("bitqat_hf_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    interop::export_hf_bitnet(*lm, (dir / "hf").string());
    EXPECT_THROW(interop::export_hf_bitnet(*lm, (dir / "hf").string()), core::UserError);
    const auto st = checkpoints::load_safetensors((dir / "hf/model.safetensors").string()).by_name();
    EXPECT_EQ(st.at("model.layers.0.self_attn.q_proj.weight").scalar_type(), at::kByte);
    EXPECT_EQ(st.at("model.layers.0.self_attn.q_proj.weight").sizes(), (std::vector<int64_t>{16, 64}));
    EXPECT_EQ(st.count("lm_head.weight"), 0u);  // tied
    const auto config = nlohmann::json::parse(core::read_file((dir / "hf/config.json").string()));
    EXPECT_EQ(config["hidden_act"], ffn == bitqat::models::Ffn::kSwiglu ? "silu" : "relu2");
    checkpoints::save_safetensors((dir / "want.safetensors").string(), {{"tokens", tokens}, {"logits", logits}});
    // float32: the same integer products; differences come from float summation order and, rarely,
    // an activation code that rounds the other way (bitqat rounds half away from zero, torch.round
    // half to even); measured 1e-6, bound 1e-3. bfloat16: transformers then runs every activation in
    // bf16 (8-bit mantissa) and activation codes move; measured 4.9% of the largest |logit|, bound 10%.
    const std::string cmd = std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR +
                            "/tests/interop/hf_bitnet_check.py " + (dir / "hf").string() + " " +
                            (dir / "want.safetensors").string() + " 1e-3 0.1";
    const auto [rc, out] = bitqat::testing::run_command(cmd);
    std::printf("%s", out.c_str());
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("OK"), std::string::npos) << out;
    fs::remove_all(dir);
  }
#endif
}

TEST(HfBitnetExport, AnUntiedHeadIsWrittenAsLmHead) {
  auto c = tiny_bitnet();
  c.tie_embeddings = false;
  auto lm = make_lm_random_norms(c);
  const auto dir = fs::temp_directory_path() / ("bitqat_hf_untied_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  interop::export_hf_bitnet(*lm, dir.string());
  const auto st = checkpoints::load_safetensors((dir / "model.safetensors").string()).by_name();
  ASSERT_EQ(st.count("lm_head.weight"), 1u);
  EXPECT_TRUE(st.at("lm_head.weight").equal(lm->lm_head->weight.detach()));
  const auto config = nlohmann::json::parse(core::read_file((dir / "config.json").string()));
  EXPECT_EQ(config["tie_word_embeddings"], false);
  EXPECT_EQ(config["quantization_config"]["quant_method"], "bitnet");
  // weight_scale is the reciprocal of the absmean scale: transformers divides by it.
  const auto q = lm->blocks[1]->ffn->down->quantized_weight();
  EXPECT_FLOAT_EQ(st.at("model.layers.1.mlp.down_proj.weight_scale").item<float>(), 1.0f / q.scales.item<float>());
  EXPECT_TRUE(interop::unpack_hf_ternary(st.at("model.layers.1.mlp.down_proj.weight")).equal(q.codes));
  fs::remove_all(dir);
}
