// Import of llama-architecture GGUFs: files written by llama.cpp's gguf-py (make_tiny_gguf_llama.py)
// must compute what Hugging Face transformers computes from the same file (LlamaForCausalLM loaded
// with gguf_file=, float32); so must SmolLM2-135M-Instruct's published Q4_1 GGUF when
// `launch/setup.sh --smollm2` has put it in the data cache. Malformed and unsupported files give
// errors that name the file, the key or tensor and the value.
#include "interop/gguf_llama.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "bitlinear/quant_spec.hpp"
#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "interop/hf_llama.hpp"
#include "interop/init_source.hpp"
#include "tests/command.hpp"
#include "tests/temp_dir.hpp"
#include "tests/user_error.hpp"

using bitqat::testing::error_of;

namespace fs = std::filesystem;
using namespace bitqat::interop;

namespace {

const char* kSmolLM2 = BITQAT_SOURCE_DIR "/data/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

class GgufLlamaTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = bitqat::testing::fresh_test_dir("gguf_llama"); }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs make_tiny_gguf_llama.py into dir_/name with `flags`; returns the directory.
  std::string make(const std::string& name, const std::string& flags = "") {
    const std::string python = BITQAT_PYTHON;
    EXPECT_FALSE(python.empty()) << "configure with -DPython3_EXECUTABLE=.venv/bin/python";
    const auto out = (dir_ / name).string();
    const auto r = bitqat::testing::run_command(
        fmt::format("'{}' '{}/tests/interop/make_tiny_gguf_llama.py' '{}' {}", python, BITQAT_SOURCE_DIR, out, flags));
    EXPECT_EQ(r.code, 0) << r.out;
    return out;
  }

  // The model of `path` loaded as init_from loads it, and its logits and loss on the expected tokens.
  static void compare(const std::string& path, const std::string& expected_dir, double logit_bound) {
    const auto want = bitqat::checkpoints::load_safetensors(expected_dir + "/expected.safetensors").by_name();
    const auto ck = load_gguf_llama(path);
    BitLM lm(ck.config, bitqat::bitlinear::QuantSpec::full_precision(), std::vector<std::string>{"*"},
             std::vector<std::string>{});
    init_model_from(path, *lm);
    at::NoGradGuard no_grad;
    lm->eval();
    const auto tokens = want.at("tokens");
    const int64_t t = tokens.size(1) - 1;
    const auto logits = lm->forward(tokens.narrow(1, 0, t));
    const auto& ref = want.at("logits");
    ASSERT_EQ(logits.sizes(), ref.sizes());
    const double err = (logits - ref).abs().max().item<double>();
    const double loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kDouble),
                                               tokens.narrow(1, 1, t).reshape({-1}))
                            .item<double>();
    const double ref_loss = want.at("loss").item<double>();
    std::printf("%s: worst logit error %.3g (largest logit %.3g); loss %.7f, transformers %.7f\n", path.c_str(), err,
                ref.abs().max().item<double>(), loss, ref_loss);
    EXPECT_LT(err, logit_bound);
    // The bound on the loss of the same tokens.
    EXPECT_NEAR(loss, ref_loss, 1e-4);
  }

  fs::path dir_;
};

}  // namespace

// Both sides dequantize the same bytes to float32 and run float32 forwards that differ in operation
// order (SDPA vs eager attention, fused vs separate RMSNorm): logits of size ~5 agree to ~1e-5.
TEST_F(GgufLlamaTest, EqualsTransformersOnTheSameFile) {
  for (const auto& [name, flags] :
       std::vector<std::pair<std::string, std::string>>{{"untied", ""}, {"tied", "--tied --seed 3"}}) {
    SCOPED_TRACE(name);
    const auto d = make(name, flags);
    const auto ck = load_gguf_llama(d + "/model.gguf");
    EXPECT_EQ(lm_config_yaml(ck.config),
              fmt::format(
                  "{{kind: lm, vocab_size: 320, dim: 256, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn: swiglu, "
                  "ffn_dim: 512, sub_norm: false, max_seq_len: 64, rope_theta: 10000, norm_eps: 9.999999747378752e-06, "
                  "tie_embeddings: {}}}",
                  name == "tied"));
    compare(d + "/model.gguf", d, 5e-4);
  }
}

TEST_F(GgufLlamaTest, SmolLM2EqualsTransformers) {
  if (!fs::exists(kSmolLM2)) GTEST_SKIP() << kSmolLM2 << " is absent: launch/setup.sh --smollm2 puts it there";
  const auto d = make("smollm2", fmt::format("--model '{}'", kSmolLM2));
  const auto ck = load_gguf_llama(kSmolLM2);
  EXPECT_EQ(lm_config_yaml(ck.config),
            "{kind: lm, vocab_size: 49152, dim: 576, n_layers: 30, n_heads: 9, n_kv_heads: 3, ffn: swiglu, ffn_dim: "
            "1536, sub_norm: false, max_seq_len: 8192, rope_theta: 100000, norm_eps: 9.999999747378752e-06, "
            "tie_embeddings: true}");
  compare(kSmolLM2, d, 2e-3);
}

// llama.cpp's converter permutes q / k rows per head: [h][2][hd/2] -> [h][hd/2][2].
TEST(GgufRope, UnpermuteInvertsLlamaCppsPermute) {
  const int64_t heads = 3, hd = 8, in = 5;
  const auto hf = at::arange(heads * hd * in, at::kFloat).reshape({heads * hd, in});
  const auto ggml = hf.reshape({heads, 2, hd / 2, in}).transpose(1, 2).reshape({heads * hd, in});
  // Row 1 of head 0 in ggml order is HF row hd/2 (the second half's first element).
  EXPECT_TRUE(ggml[1].equal(hf[hd / 2]));
  EXPECT_TRUE(unpermute_rope_rows(ggml, heads).equal(hf));
}

TEST_F(GgufLlamaTest, BadFilesNameWhatIsWrong) {
  const auto arch = make("arch", "--variant arch") + "/model.gguf";
  EXPECT_EQ(error_of([&] { load_gguf_llama(arch); }),
            arch +
                ": general.architecture = \"qwen2\": expected \"llama\" (bitqat imports llama-architecture GGUFs: "
                "token_embd, blk.N.attn_q, ..., ffn_gate)");
  const auto cut = make("truncated", "--variant truncated") + "/model.gguf";
  const auto e = error_of([&] { load_gguf_llama(cut); });
  EXPECT_NE(e.find(cut + ": not a valid GGUF file: tensor "), std::string::npos) << e;
  EXPECT_NE(e.find("run past the end of the file (truncated?)"), std::string::npos) << e;
  const auto bias = make("bias", "--variant bias") + "/model.gguf";
  EXPECT_EQ(error_of([&] { load_gguf_llama(bias); }),
            bias +
                ": tensor 'blk.0.attn_q.bias' is not part of a llama model (bitqat imports bias-free Llama blocks: "
                "attn_norm, attn_q/k/v/output, ffn_norm, ffn_gate/up/down)");
  const auto rope = make("rope", "--variant rope_scaling") + "/model.gguf";
  EXPECT_EQ(error_of([&] { load_gguf_llama(rope); }),
            rope + ": llama.rope.scaling.type = \"linear\": expected none (RoPE scaling is not supported)");
  // init_from recognises a GGUF by its magic; a GGUF whose model differs from the config is refused
  // with the model section that fits.
  const auto good = make("good") + "/model.gguf";
  EXPECT_EQ(read_init_source(good).kind, bitqat::interop::InitKind::kGgufLlama);
  auto c = load_gguf_llama(good).config;
  c.vocab_size = 256;
  BitLM other(c, bitqat::bitlinear::QuantSpec::full_precision(), std::vector<std::string>{"*"},
              std::vector<std::string>{});
  const auto m = error_of([&] { init_model_from(good, *other, "x.yaml:2: init_from"); });
  EXPECT_NE(m.find("x.yaml:2: init_from = " + good +
                   ": the config's model does not match the gguf-llama source: "
                   "model.vocab_size = 256 (source: 320)"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("this checkpoint needs model: {kind: lm, vocab_size: 320, dim: 256"), std::string::npos) << m;
}
