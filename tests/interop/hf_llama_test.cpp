// Import of Hugging Face Llama checkpoints: tiny checkpoints written by the Python `safetensors`
// package (make_tiny_llama.py, run with the project's virtual environment) must give the logits of
// an independent numpy Llama forward pass; malformed configs, tensors and files give clear errors.
#include "interop/hf_llama.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>
#include "bitlinear/convert.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "tests/temp_dir.hpp"
#include "tests/user_error.hpp"

using bitqat::testing::error_of;

namespace fs = std::filesystem;
using namespace bitqat::models;
using namespace bitqat::interop;
using bitqat::bitlinear::QuantSpec;

namespace {

using S = std::vector<std::string>;

class HFImportTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = bitqat::testing::fresh_test_dir("hf"); }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs make_tiny_llama.py into dir_/name with `flags`; returns the directory.
  std::string make(const std::string& name, const std::string& flags = "") {
    const std::string python = BITQAT_PYTHON;
    if (python.empty())
      ADD_FAILURE() << "BITQAT_PYTHON is not set: configure with -DPython3_EXECUTABLE=.venv/bin/python";
    const auto out = (dir_ / name).string();
    const auto cmd =
        fmt::format("'{}' '{}/tests/interop/make_tiny_llama.py' '{}' {}", python, BITQAT_SOURCE_DIR, out, flags);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return out;
  }

  static std::map<std::string, at::Tensor> expected(const std::string& d) {
    return bitqat::checkpoints::load_safetensors(d + "/expected.safetensors").by_name();
  }

  static nlohmann::json config_json(const std::string& d) {
    return nlohmann::json::parse(bitqat::core::read_file(d + "/config.json"));
  }

  static std::map<std::string, at::Tensor> hf_tensors(const std::string& d) {
    return bitqat::checkpoints::load_safetensors(d + "/model.safetensors").by_name();
  }

  fs::path dir_;
};

void expect_logits_match(BitLM& lm, const std::map<std::string, at::Tensor>& want, const std::string& what) {
  at::NoGradGuard no_grad;
  lm->eval();
  const auto got = lm->forward(want.at("tokens"));
  const auto& ref = want.at("logits");
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const double err = (got - ref).abs().max().item<double>();
  std::printf("%s: worst logit error %.3g (largest logit %.3g)\n", what.c_str(), err, ref.abs().max().item<double>());
  // float32 forward vs a float64 reference of the same weights; logits are O(1..10) and the errors
  // measured here are about 1e-6.
  EXPECT_LT(err, 5e-5) << what << ": worst logit error " << err;
}

}  // namespace

TEST_F(HFImportTest, LogitsMatchAnIndependentLlamaForward) {
  for (const auto& [name, flags] : std::vector<std::pair<std::string, std::string>>{
           {"untied", ""}, {"tied", "--tied --seed 1"}, {"sharded", "--sharded --seed 2"}, {"fp16", "--float16"}}) {
    const auto d = make(name, flags);
    auto lm = import_hf_llama(d, QuantSpec::full_precision(), S{"*"}, S{});
    EXPECT_FALSE(lm->config.sub_norm) << name;
    EXPECT_EQ(lm->config.ffn, bitqat::models::Ffn::kSwiglu) << name;
    EXPECT_EQ(lm->config.n_kv_heads, 2) << name;  // grouped-query attention is exercised
    EXPECT_EQ(lm->config.tie_embeddings, name == "tied") << name;
    EXPECT_TRUE(bitqat::bitlinear::quantized_layer_names(*lm).empty());
    expect_logits_match(lm, expected(d), name);
  }
}

TEST_F(HFImportTest, TernaryLayersAtLambdaZeroAreTheLlamaFunction) {
  const auto d = make("m");
  auto lm = import_hf_llama(d, QuantSpec{}, S{"layers.*"}, S{"*.attn.v"});
  const auto q = bitqat::bitlinear::quantized_layer_names(*lm);
  EXPECT_EQ(q.size(), 2u * 6u);  // q, k, o, gate, up, down per layer; v excluded
  for (const auto& n : q) EXPECT_EQ(n.find("attn.v"), std::string::npos) << n;
  bitqat::bitlinear::set_quant_lambdas(*lm, 0.0, 0.0);
  expect_logits_match(lm, expected(d), "lambda 0");
  // Fully quantized, the function changes (the ternarization is real).
  bitqat::bitlinear::set_quant_lambdas(*lm, 1.0, 1.0);
  at::NoGradGuard no_grad;
  const auto want = expected(d);
  EXPECT_GT((lm->forward(want.at("tokens")) - want.at("logits")).abs().max().item<double>(), 1e-2);
}

TEST_F(HFImportTest, ConfigErrorsNameTheFileAndKey) {
  const auto d = make("m");
  const auto base = config_json(d);
  const std::string origin = "m/config.json";
  auto err = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = base;
    edit(j);
    return error_of([&] { lm_config_from_hf(j, origin); });
  };
  EXPECT_NO_THROW(lm_config_from_hf(base, origin));
  EXPECT_NE(
      err([](auto& j) { j["hidden_act"] = "gelu"; }).find("m/config.json: hidden_act = \"gelu\": expected \"silu\""),
      std::string::npos);
  EXPECT_NE(err([](auto& j) { j["model_type"] = "mistral"; }).find("model_type = \"mistral\": expected \"llama\""),
            std::string::npos);
  EXPECT_NE(err([](auto& j) { j.erase("hidden_size"); }).find("m/config.json: hidden_size is missing"),
            std::string::npos);
  EXPECT_NE(err([](auto& j) { j["hidden_size"] = "32"; }).find("hidden_size = \"32\": expected an integer"),
            std::string::npos);
  EXPECT_NE(err([](auto& j) {
              j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
            }).find("rope_scaling = {"),
            std::string::npos);
  EXPECT_NE(err([](auto& j) { j["attention_bias"] = true; }).find("attention_bias = true: expected false"),
            std::string::npos);
  EXPECT_NE(
      err([](auto& j) { j["head_dim"] = 16; }).find("head_dim = 16: expected hidden_size / num_attention_heads = 8"),
      std::string::npos);
  EXPECT_NE(err([](auto& j) { j["num_key_value_heads"] = 3; }).find("num_key_value_heads = 3: expected a divisor"),
            std::string::npos);
  // Newer transformers keep rope_theta under rope_parameters.
  auto j = base;
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1234.0}};
  EXPECT_DOUBLE_EQ(lm_config_from_hf(j, origin).rope_theta, 1234.0);
  j["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_NE(error_of([&] { lm_config_from_hf(j, origin); }).find("rope_parameters.rope_type = \"yarn\""),
            std::string::npos);
}

TEST_F(HFImportTest, TensorErrorsNameTheTensor) {
  const auto d = make("m");
  const auto c = lm_config_from_hf(config_json(d), "config.json");
  const auto hf = hf_tensors(d);
  EXPECT_EQ(bitqat_tensors_from_hf(hf, c, "x").size(), hf.size());

  auto missing = hf;
  missing.erase("model.layers.1.mlp.up_proj.weight");
  EXPECT_NE(error_of([&] {
              bitqat_tensors_from_hf(missing, c, "x.safetensors");
            }).find("x.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' is missing"),
            std::string::npos);
  auto shape = hf;
  shape["model.layers.0.self_attn.k_proj.weight"] = at::zeros({32, 32});
  EXPECT_NE(error_of([&] {
              bitqat_tensors_from_hf(shape, c, "x");
            }).find("tensor 'model.layers.0.self_attn.k_proj.weight' has shape [32, 32], config.json implies [16, 32]"),
            std::string::npos);
  auto extra = hf;
  extra["model.layers.0.self_attn.q_proj.bias"] = at::zeros({32});
  EXPECT_NE(error_of([&] {
              bitqat_tensors_from_hf(extra, c, "x");
            }).find("tensor 'model.layers.0.self_attn.q_proj.bias' is not part of a Llama model"),
            std::string::npos);
  auto ints = hf;
  ints["model.norm.weight"] = at::ones({32}, at::kInt);
  EXPECT_NE(error_of([&] { bitqat_tensors_from_hf(ints, c, "x"); }).find("expected a floating-point type"),
            std::string::npos);
  auto rotary = hf;  // old checkpoints carry the rotary buffer: skipped
  rotary["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({4});
  EXPECT_NO_THROW(bitqat_tensors_from_hf(rotary, c, "x"));

  // Tied: a stored head must be the embedding.
  auto tied_c = c;
  tied_c.tie_embeddings = true;
  auto tied = hf;
  tied["lm_head.weight"] = hf.at("model.embed_tokens.weight").clone();
  EXPECT_NO_THROW(bitqat_tensors_from_hf(tied, tied_c, "x"));
  tied["lm_head.weight"] = hf.at("lm_head.weight");
  EXPECT_NE(error_of([&] {
              bitqat_tensors_from_hf(tied, tied_c, "x");
            }).find("'lm_head.weight' differs from 'model.embed_tokens.weight'"),
            std::string::npos);
}

TEST_F(HFImportTest, FileErrors) {
  EXPECT_NE(error_of([&] { load_hf_llama(dir_.string()); }).find("not a Hugging Face model directory"),
            std::string::npos);
  const auto d = make("m");
  // Truncated weights: the safetensors reader names the file.
  const auto w = d + "/model.safetensors";
  const auto bytes = bitqat::core::read_file(w);
  bitqat::core::write_file_atomic(w, bytes.substr(0, bytes.size() - 10));
  EXPECT_NE(error_of([&] { load_hf_llama(d); }).find(w + ": not a valid safetensors file"), std::string::npos);
  fs::remove(w);
  EXPECT_NE(error_of([&] { load_hf_llama(d); }).find("neither model.safetensors nor model.safetensors.index.json"),
            std::string::npos);

  const auto s = make("s", "--sharded");
  fs::remove(s + "/model-00002-of-00002.safetensors");
  EXPECT_NE(
      error_of([&] { load_hf_llama(s); }).find("model-00002-of-00002.safetensors named by the weight_map is missing"),
      std::string::npos);
  // A weight_map may only name files of the model directory itself.
  const auto index_path = s + "/model.safetensors.index.json";
  const auto index = bitqat::core::read_file(index_path);
  for (const std::string bad : {"../outside.safetensors", "/etc/passwd", "sub/x.safetensors", ".."}) {
    auto j = nlohmann::json::parse(index);
    j["weight_map"]["model.norm.weight"] = bad;
    bitqat::core::write_file_atomic(index_path, j.dump());
    EXPECT_EQ(error_of([&] { load_hf_llama(s); }),
              fmt::format("{}: weight_map.model.norm.weight = \"{}\": expected the name of a file in the model "
                          "directory (no path), not a path that leads elsewhere",
                          index_path, bad));
  }
  bitqat::core::write_file_atomic(s + "/config.json", "{not json");
  EXPECT_NE(error_of([&] { load_hf_llama(s); }).find(s + "/config.json: not valid JSON"), std::string::npos);
}
