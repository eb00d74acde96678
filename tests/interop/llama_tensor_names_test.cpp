// The Llama tensor name table against sources that do not share it: bitqat's own model (its parameter
// names and shapes), gguf-py's tensor names and name map, and transformers' LlamaForCausalLM and
// BitNetForCausalLM (their parameter names and shapes).
#include "interop/llama_tensor_names.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/fs.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;
using namespace bitqat;

namespace {

models::LMConfig config(bool sub_norm, bool tied, models::Ffn ffn = models::Ffn::kSwiglu) {
  models::LMConfig c;
  c.vocab_size = 96;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn = ffn;
  c.ffn_dim = 128;
  c.sub_norm = sub_norm;
  c.tie_embeddings = tied;
  return c;
}

}  // namespace

// Every parameter of a BitLM is one entry, with its shape, and nothing else: for SubLN and plain
// blocks, tied and untied heads, gated and ungated FFNs.
TEST(LlamaTensorNames, BitqatNamesAndShapesAreTheModelsParameters) {
  for (const auto& c : {config(true, true), config(false, false), config(true, false, models::Ffn::kRelu2),
                        config(false, true, models::Ffn::kRelu2Glu)}) {
    const models::BitLM lm(c, bitlinear::QuantSpec{}, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
    std::map<std::string, std::vector<int64_t>> params, table;
    for (const auto& p : lm->named_parameters()) params[p.key()] = p.value().sizes().vec();
    for (const auto& e : interop::llama_tensors(c)) {
      table[e.bitqat + ".weight"] = e.shape;
      EXPECT_TRUE(interop::llama_weight(*lm, e).is_same(lm->named_parameters()[e.bitqat + ".weight"])) << e.bitqat;
      if (e.row->role == interop::TensorRole::kLinear) {
        EXPECT_NO_THROW(interop::llama_linear(*lm, e)) << e.bitqat;
      }
    }
    EXPECT_EQ(table, params) << "sub_norm " << c.sub_norm << " tied " << c.tie_embeddings << " ffn "
                             << models::to_string(c.ffn);
  }
}

// Only q and k are permuted for llama.cpp's RoPE, each with its own head count (4 and 2 here).
TEST(LlamaTensorNames, RopePermutationTakesQAndKHeads) {
  std::map<std::string, int64_t> heads;
  for (const auto& e : interop::llama_tensors(config(false, false))) {
    if (e.rope_heads > 0) heads[e.gguf] = e.rope_heads;
  }
  EXPECT_EQ(heads, (std::map<std::string, int64_t>{
                       {"blk.0.attn_q", 4}, {"blk.0.attn_k", 2}, {"blk.1.attn_q", 4}, {"blk.1.attn_k", 2}}));
}

TEST(LlamaTensorNames, HfAndGgufNamesAreGgufPysAndTransformers) {
  const auto dir = fs::temp_directory_path() / ("bitqat_llama_names_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto base = config(true, true);
  nlohmann::json j = {{"config",
                       {{"vocab_size", base.vocab_size},
                        {"dim", base.dim},
                        {"n_layers", base.n_layers},
                        {"n_heads", base.n_heads},
                        {"n_kv_heads", base.n_kv_heads},
                        {"ffn_dim", base.ffn_dim}}},
                      {"models", nlohmann::json::array()}};
  // The GGUF architectures bitqat writes: bitnet (SubLN, tied) and llama (no SubLN, tied or not).
  for (const auto& [arch, c] :
       {std::make_pair("bitnet", config(true, true)), std::make_pair("llama", config(false, true)),
        std::make_pair("llama", config(false, false))}) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& e : interop::llama_tensors(c))
      tensors.push_back({{"hf", e.hf}, {"gguf", e.gguf}, {"shape", e.shape}});
    j["models"].push_back({{"arch", arch}, {"tied", c.tie_embeddings}, {"tensors", tensors}});
  }
  const auto path = (dir / "table.json").string();
  core::write_file_atomic(path, j.dump());
  const auto r = bitqat::testing::run_command(
      fmt::format("'{}' '{}/tests/interop/llama_tensor_names_check.py' '{}'", BITQAT_PYTHON, BITQAT_SOURCE_DIR, path));
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* line : {"bitnet (tied): 24 tensors checked, 0 bad", "llama (tied): 20 tensors checked, 0 bad",
                           "llama (untied): 21 tensors checked, 0 bad"}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  }
  fs::remove_all(dir);
}
