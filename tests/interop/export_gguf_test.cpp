// The gguf export: a tiny bitnet-shaped model written as TQ2_0 and TQ1_0, read back by our reader
// (codes exact, scales to fp16) and by llama.cpp's gguf-py; refusals name the option.
#include "interop/export_gguf.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "checkpoints/safetensors.hpp"
#include "core/error.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;
namespace gguf = bitqat::checkpoints::gguf;
using namespace bitqat;

namespace {

models::LMConfig tiny() {
  models::LMConfig c;
  c.vocab_size = 256;
  c.dim = 256;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn = "relu2_glu";
  c.ffn_dim = 512;
  c.max_seq_len = 64;
  return c;
}

models::BitLM make_lm(const models::LMConfig& c, bitlinear::QuantSpec spec = {}) {
  return models::BitLM(c, spec, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
}

std::string error_of(const models::BitLM& lm) {
  try {
    interop::check_gguf_compatible(*lm);
  } catch (const core::UserError& e) {
    return e.what();
  }
  return "";
}

fs::path temp_dir() {
  const auto d = fs::temp_directory_path() / ("bitqat_gguf_export_" + std::to_string(::getpid()) + "_" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

at::Tensor half_rounded(const at::Tensor& x) { return x.to(at::kHalf).to(at::kFloat); }

}  // namespace

TEST(GgufExport, ByteTokensAreGpt2sAlphabet) {
  const auto t = interop::gpt2_byte_tokens();
  ASSERT_EQ(t.size(), 256u);
  EXPECT_EQ(t['A'], "A");
  EXPECT_EQ(t[' '], "\xc4\xa0");   // U+0120
  EXPECT_EQ(t['\n'], "\xc4\x8a");  // U+010A
  EXPECT_EQ(t[0], "\xc4\x80");     // U+0100
  EXPECT_EQ(std::set<std::string>(t.begin(), t.end()).size(), 256u);
}

TEST(GgufExport, WritesTheBitnetLayoutWithExactCodes) {
  at::manual_seed(3);
  const auto lm = make_lm(tiny());
  const auto dir = temp_dir();
  for (auto type : {gguf::GgmlType::kTQ2_0, gguf::GgmlType::kTQ1_0}) {
    const auto path = (dir / fmt::format("m_{}.gguf", gguf::to_string(type))).string();
    const auto size = interop::export_gguf(*lm, path, type, "tiny");
    EXPECT_EQ(size, static_cast<int64_t>(fs::file_size(path)));
    const auto f = gguf::load(path);
    EXPECT_EQ(f.find("general.architecture")->data, "bitnet");
    EXPECT_EQ(f.find("bitnet.embedding_length")->data, 256);
    EXPECT_EQ(f.find("bitnet.feed_forward_length")->data, 512);
    EXPECT_EQ(f.find("bitnet.attention.head_count_kv")->data, 2);
    EXPECT_EQ(f.find("bitnet.rope.dimension_count")->data, 64);
    EXPECT_EQ(f.find("bitnet.hidden_activation")->data, "relu2");
    EXPECT_EQ(f.find("tokenizer.ggml.tokens")->data.size(), 256u);
    EXPECT_EQ(f.find("general.file_type")->data, type == gguf::GgmlType::kTQ1_0 ? 36 : 37);
    EXPECT_EQ(f.tensors.size(), 2u + 11u * 2u);
    EXPECT_EQ(f.tensor("output.weight"), nullptr);  // tied: llama.cpp reads token_embd
    EXPECT_TRUE(gguf::dequantize(*f.tensor("token_embd.weight")).equal(lm->embed->weight.detach()));
    EXPECT_TRUE(gguf::dequantize(*f.tensor("blk.1.ffn_sub_norm.weight"))
                    .equal(lm->blocks[1]->ffn->down->norm->weight.detach()));
    for (const auto& [name, layer] : std::vector<std::pair<std::string, bitlinear::BitLinear>>{
             {"blk.0.attn_q.weight", lm->blocks[0]->attn->q},
             {"blk.0.attn_k.weight", lm->blocks[0]->attn->k},
             {"blk.1.attn_output.weight", lm->blocks[1]->attn->o},
             {"blk.1.ffn_down.weight", lm->blocks[1]->ffn->down}}) {
      const auto* t = f.tensor(name);
      ASSERT_NE(t, nullptr) << name;
      EXPECT_EQ(t->type, type);
      EXPECT_EQ(t->ne, (std::vector<int64_t>{layer->options.in_features, layer->options.out_features}));
      const auto q = layer->quantized_weight();
      EXPECT_TRUE(gguf::ternary_codes(*t).equal(q.codes)) << name;
      // d = the layer's absmean scale, rounded to fp16.
      EXPECT_TRUE(gguf::dequantize(*t).equal(q.codes.to(at::kFloat) * half_rounded(q.scales))) << name;
    }
  }
  fs::remove_all(dir);
}

TEST(GgufExport, PerChannelScalesGoIntoEachRowsBlocks) {
  at::manual_seed(4);
  bitlinear::QuantSpec spec;
  spec.weight.granularity = bitlinear::Granularity::kPerChannel;
  const auto lm = make_lm(tiny(), spec);
  const auto f = interop::gguf_from_lm(*lm, gguf::GgmlType::kTQ2_0, "pc");
  const auto q = lm->blocks[0]->ffn->up->quantized_weight();
  EXPECT_TRUE(gguf::dequantize(*f.tensor("blk.0.ffn_up.weight"))
                  .equal(q.codes.to(at::kFloat) * half_rounded(q.scales).unsqueeze(1)));
}

TEST(GgufExport, RefusesWhatTheBitnetLayoutCannotExpress) {
  auto c = tiny();
  c.ffn = "relu2";
  EXPECT_NE(error_of(make_lm(c)).find("model.ffn = relu2"), std::string::npos);
  c = tiny();
  c.tie_embeddings = false;
  EXPECT_NE(error_of(make_lm(c)).find("model.tie_embeddings"), std::string::npos);
  c = tiny();
  c.vocab_size = 300;
  EXPECT_NE(error_of(make_lm(c)).find("model.vocab_size = 300"), std::string::npos);
  c = tiny();
  c.dim = 128;
  c.ffn_dim = 256;
  EXPECT_NE(error_of(make_lm(c)).find("multiples of 256"), std::string::npos);
  bitlinear::QuantSpec groups;
  groups.weight.granularity = bitlinear::Granularity::kPerGroup;
  groups.weight.group_size = 128;
  EXPECT_NE(error_of(make_lm(tiny(), groups)).find("group_size = 128"), std::string::npos);
  EXPECT_EQ(error_of(make_lm(tiny())), "");
}

// Every block scale becomes an fp16 d: values it cannot hold are refused, naming the layer and the
// value, and nothing is written.
TEST(GgufExport, ScalesAnFp16CannotHoldAreRefused) {
  const auto dir = temp_dir();
  for (const double scale : {1e5, 1e-9}) {
    auto lm = make_lm(tiny());
    {
      at::NoGradGuard g;
      lm->blocks[1]->ffn->up->weight.mul_(scale / lm->blocks[1]->ffn->up->weight.abs().mean().item<double>());
    }
    const auto out = (dir / "m.gguf").string();
    std::string e;
    try {
      interop::export_gguf(*lm, out, gguf::GgmlType::kTQ2_0, "m");
    } catch (const core::UserError& err) {
      e = err.what();
    }
    const auto gamma = lm->blocks[1]->ffn->up->quantized_weight().scales.item<double>();
    EXPECT_NE(e.find(fmt::format("gguf export: blk.1.ffn_up.weight has block scale {} (block 0), which an fp16 d "
                                 "cannot hold",
                                 static_cast<double>(static_cast<float>(gamma)))),
              std::string::npos)
        << e;
    EXPECT_FALSE(fs::exists(out));
  }
  fs::remove_all(dir);
}

TEST(GgufExport, GgufPythonPackageReadsTheExportedModel) {
#ifndef BITQAT_PYTHON
  GTEST_SKIP() << "no Python configured (cmake -DPython3_EXECUTABLE=...)";
#else
  at::manual_seed(5);
  const auto lm = make_lm(tiny());
  const auto dir = temp_dir();
  for (const char* type : {"tq2", "tq1"}) {
    const auto path = (dir / (std::string(type) + ".gguf")).string();
    interop::export_gguf(*lm, path, type[2] == '2' ? gguf::GgmlType::kTQ2_0 : gguf::GgmlType::kTQ1_0, "tiny");
    checkpoints::NamedTensors want;
    for (const auto& t : gguf::load(path).tensors) want.emplace_back(t.name, gguf::dequantize(t));
    const auto want_path = (dir / (std::string(type) + ".safetensors")).string();
    checkpoints::save_safetensors(want_path, want);
    const std::string cmd = std::string(BITQAT_PYTHON) + " " + BITQAT_SOURCE_DIR + "/tests/checkpoints/gguf_check.py " +
                            path + " " + want_path;
    const auto [rc, out] = bitqat::testing::run_command(cmd);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("general.architecture bitnet"), std::string::npos) << out;
    EXPECT_NE(out.find("24 tensors checked, 0 bad"), std::string::npos) << out;
  }
  fs::remove_all(dir);
#endif
}
