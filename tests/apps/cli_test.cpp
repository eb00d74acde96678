// Runs the real `bitqat` binary: exit codes, one-line errors, and a tiny train -> eval -> generate.
#include <ATen/cpu/Utils.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/cpu_isa.hpp"
#include "core/fs.hpp"
#include "data/bpe_tokenizer.hpp"
#include "data/source.hpp"
#include "tests/command.hpp"

namespace fs = std::filesystem;

namespace {

// `bitqat args`, after `env` (variable assignments or an `env ...` command) when given.
bitqat::testing::CommandResult run(const std::string& args, const std::string& env = "") {
  return bitqat::testing::run_command(env + (env.empty() ? "" : " ") + BITQAT_BINARY_DIR + "/bitqat " + args);
}

// A fresh directory <tmp>/<prefix><pid> holding t.txt: `lines` copies of one sentence.
fs::path dir_with_corpus(const std::string& prefix, int lines) {
  const auto dir = fs::temp_directory_path() / (prefix + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::string text;
  for (int i = 0; i < lines; ++i) text += "In the beginning was the word, and the word was with the cat.\n";
  bitqat::core::write_file_atomic((dir / "t.txt").string(), text);
  return dir;
}

// The last line of a command's output that is a JSON object (the log lines come before it; the
// object may nest others, so the last '{' is not its start).
nlohmann::json last_json_line(const std::string& out) {
  const auto end = out.find_last_not_of('\n');
  const auto start = out.rfind('\n', end);
  return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
}

}  // namespace

TEST(Cli, HelpVersionAndUnknownThings) {
  auto r = run("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("usage: bitqat <command>"), std::string::npos);
  r = run("version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("bitqat 0.1.0 (LibTorch 2.11.0", 0), 0u) << r.out;
  // launch/test.sh asks which capability passes this CPU can run; the answer is core::cpu_runs's
  // (tests/core/cpu_isa_test.cpp checks that against /proc/cpuinfo), in ATEN_CPU_CAPABILITY's spelling.
  r = run("version --cpu-isas");
  EXPECT_EQ(r.code, 0);
  std::string isas = "default";
  if (bitqat::core::cpu_runs(bitqat::core::CpuIsa::kAvx2)) isas += " avx2";
  if (bitqat::core::cpu_runs(bitqat::core::CpuIsa::kAvx512)) isas += " avx512";
  EXPECT_EQ(r.out, isas + "\n");
  r = run("version --cpu-isas --cpu-capability");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat version: error: --cpu-capability excludes --cpu-isas"), std::string::npos) << r.out;
  EXPECT_EQ(run("").code, 2);
  r = run("fly");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("unknown command 'fly'"), std::string::npos);
  r = run("train --bogus");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat train: error: unknown option or extra argument '--bogus'"), std::string::npos) << r.out;
  for (const char* c : {"train", "eval", "generate", "sample", "quantize", "export", "config", "plan"}) {
    r = run(std::string(c) + " --help");
    EXPECT_EQ(r.code, 0) << c;
    EXPECT_NE(r.out.find(std::string("Usage: bitqat ") + c), std::string::npos) << r.out;
  }
  // A launcher variable that is not a rank is a user error, before any work.
  r = run("train --set train.steps=1", "RANK=first");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat train: error: environment variable RANK = 'first' is not a non-negative integer"),
            std::string::npos)
      << r.out;
  // The top-level help lists every command once.
  r = run("--help");
  for (const char* c : {"\n  train ", "\n  eval ", "\n  generate ", "\n  sample ", "\n  quantize ", "\n  export ",
                        "\n  config ", "\n  version "}) {
    const auto at = r.out.find(c);
    EXPECT_NE(at, std::string::npos) << c;
    EXPECT_EQ(r.out.find(c, at + 1), std::string::npos) << c << " listed twice";
  }
  EXPECT_EQ(r.out.find("sample text from a language model run"),
            r.out.rfind("sample text from a language model run"));
  EXPECT_NE(r.out.find("export RUN_DIR --format packed|hf-bitnet|gguf --out PATH [--gguf-type tq1_0|tq2_0|q1_0|q2_0]"),
            std::string::npos)
      << r.out;
  // The export help describes every format; the GGUF types' bits per weight are bytes per block * 8 /
  // weights per block (ggml: TQ1_0 54 / 256, TQ2_0 66 / 256, Q1_0 18 / 128, Q2_0 18 / 64).
  r = run("export --help");
  std::string help = r.out;
  for (size_t at; (at = help.find("\n             ")) != std::string::npos;) help.replace(at, 14, " ");  // unwrap
  for (const char* s : {"\n  packed     a directory with 2-bit ternary weights",
                        "\n  hf-bitnet  a directory Hugging Face", "\n  gguf       one GGUF file for llama.cpp",
                        "tq1_0 (1.6875 bits/weight, blocks of 256), tq2_0 (2.0625 bits/weight, blocks of 256, the "
                        "default), q1_0 (1.125 bits/weight, blocks of 128) or q2_0 (2.25 bits/weight, blocks of 64)"}) {
    EXPECT_NE(help.find(s), std::string::npos) << s << "\n" << r.out;
  }
}

TEST(Cli, BadInputIsOneClearLineAndExitTwo) {
  auto r = run("train /nonexistent/cfg.yaml");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat train: error: /nonexistent/cfg.yaml: cannot open config file"), std::string::npos)
      << r.out;
  r = run("train configs/quickstart.yaml --set train.steps=abc");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--set train.steps=abc: train.steps = abc: expected an integer"), std::string::npos) << r.out;
  r = run("eval /nonexistent/run");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("not a bitqat run directory"), std::string::npos) << r.out;
  r = run("train configs/quickstart.yaml --set 'train.activation_checkpointing={every_n: 0}'");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--set train.activation_checkpointing={every_n: 0}: train.activation_checkpointing.every_n = 0: "
                       "expected an integer >= 1"),
            std::string::npos)
      << r.out;
}

TEST(Cli, TrainEvalGenerate) {
  const auto dir = dir_with_corpus("bitqat_cli_", 300);
  const std::string sets =
      " --set run.dir=" + dir.string() + " --set run.name=cli --set data.path=" + (dir / "t.txt").string() +
      " --set train.steps=8 --set train.batch_size=4 --set data.seq_len=32 --set model.max_seq_len=32"
      " --set model.dim=32 --set model.n_layers=1 --set model.ffn_dim=64 --set train.eval_every=8"
      " --set checkpoint.every=4 --set train.log_every=4 --set optim.lr.warmup_steps=2"
      " --set device.type=cpu";
  auto r = run("train configs/quickstart.yaml" + sets);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("trained 8 steps"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir / "cli/config.resolved.yaml"));
  EXPECT_TRUE(fs::exists(dir / "cli/checkpoints/step_00000008/manifest.json"));
  r = run("train configs/quickstart.yaml" + sets);  // again without --resume: refused, nothing lost
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("pass --resume"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir / "cli/checkpoints/step_00000008/manifest.json"));

  r = run("eval " + (dir / "cli").string() + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j["step"], 8);
  EXPECT_GT(j["val_loss"].get<double>(), 0.0);
  EXPECT_NEAR(j["val_bpb"].get<double>(), j["val_loss"].get<double>() / std::log(2.0), 1e-9);

  r = run("generate " + (dir / "cli").string() + " --prompt 'In the' --tokens 12 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto line = r.out.substr(r.out.rfind("In the"));
  EXPECT_GE(line.size(), 6u + 12u);
  r = run("generate " + (dir / "cli").string() + " --prompt x --tokens many");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--tokens: 'many': expected an integer"), std::string::npos) << r.out;

  // A packed export runs under eval and generate like the run itself.
  const auto packed = (dir / "packed").string();
  r = run("export " + (dir / "cli").string() + " --format packed --out " + packed);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("quantized layers"), std::string::npos) << r.out;
  r = run("eval " + packed + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto jp = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_NEAR(jp["val_loss"].get<double>(), j["val_loss"].get<double>(), 1e-3);
  r = run("generate " + packed + " --prompt 'In the' --tokens 12 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.substr(r.out.rfind("In the")), line);
  r = run("export " + (dir / "cli").string() + " --format packed --out " + packed);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
  r = run("export " + (dir / "cli").string() + " --format onnx --out x");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--format: onnx not in {packed,hf-bitnet,gguf}"), std::string::npos) << r.out;
  r = run("export " + (dir / "cli").string() + " --format hf-bitnet --out " + (dir / "hf").string());
  EXPECT_EQ(r.code, 2);  // the quickstart's FFN is relu2, not BitNet's gated relu2_glu
  EXPECT_NE(r.out.find("model.ffn = relu2"), std::string::npos) << r.out;
  r = run("export " + (dir / "cli").string() + " --format gguf --out " + (dir / "m.gguf").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("model.ffn = relu2"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir / "m.gguf"));
  fs::remove_all(dir);
}

// llama.cpp's graphs build a SiLU-gated FFN: a relu2_glu run is refused by the GGUF export (exit 2, the
// error naming model.ffn and the option), and --gguf-force-relu2 writes it with a warning.
// A language model trained on token shards, fine-tuned from a Hugging Face Llama directory whose
// tokenizer.json is a byte-level BPE: generate encodes the prompt with that tokenizer and prints
// the continuation as text; eval scores it; a run without init_from has no tokenizer and says so.
TEST(Cli, GenerateAndEvalOnATokenizedRun) {
  const std::string python = BITQAT_PYTHON;
  ASSERT_FALSE(python.empty()) << "configure with -DPython3_EXECUTABLE=.venv/bin/python";
  const auto dir = fs::temp_directory_path() / ("bitqat_cli_tok_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const auto hf = dir / "llama";
  auto r = bitqat::testing::run_command(
      fmt::format("'{}' '{}/tests/interop/make_tiny_llama.py' '{}' --vocab 260", python, BITQAT_SOURCE_DIR, hf.string()));
  ASSERT_EQ(r.code, 0) << r.out;
  // Ids 0..255: the bytes; 256 "th", 257 " th" (in GPT-2's alphabet); two special tokens. SmolLM2's
  // pre-tokenizer (digits split first).
  nlohmann::json vocab = nlohmann::json::object();
  const auto bytes = bitqat::data::gpt2_byte_tokens();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  vocab["th"] = 256;
  vocab["\xc4\xa0th"] = 257;
  const nlohmann::json tj = {
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}}},
      {"added_tokens",
       {{{"id", 258}, {"content", "<|endoftext|>"}, {"special", true}},
        {{"id", 259}, {"content", "<|im_end|>"}, {"special", true}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"t h", "\xc4\xa0 th"}}}}};
  bitqat::core::write_file_atomic((hf / "tokenizer.json").string(), tj.dump());
  bitqat::core::write_file_atomic((hf / "tokenizer_config.json").string(), R"({"eos_token": "<|endoftext|>"})");
  // Shards of the text's bytes (one token per byte: enough to train on).
  std::string text;
  for (int i = 0; i < 200; ++i) text += "In the beginning God created the heaven and the earth.\n";
  std::vector<uint16_t> ids(text.begin(), text.end());
  bitqat::data::write_shard((dir / "t_train_000000.bin").string(), ids);
  bitqat::data::write_shard((dir / "t_val_000000.bin").string(), std::vector<uint16_t>(ids.begin(), ids.begin() + 2000));
  const auto yaml = [&](const std::string& name, const std::string& init_from) {
    return fmt::format(R"(
run: {{name: {}, dir: {}, seed: 3}}
{}
model: {{kind: lm, vocab_size: 260, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn: swiglu, ffn_dim: 48,
        sub_norm: false, max_seq_len: 64, rope_theta: 500, norm_eps: 1.0e-5, tie_embeddings: false}}
quant: {{include: ["layers.*"]}}
data: {{kind: shards, train: {}/t_train_*.bin, val: {}/t_val_*.bin, vocab_size: 260, seq_len: 32}}
train: {{steps: 2, batch_size: 4, log_every: 1, eval_every: 0, eval_batches: 2}}
checkpoint: {{every: 0, keep_last: 1}}
device: {{type: cpu, threads: 1}}
)",
                       name, dir.string(), init_from.empty() ? "" : "init_from: " + init_from, dir.string(),
                       dir.string());
  };
  bitqat::core::write_file_atomic((dir / "tok.yaml").string(), yaml("tok", hf.string()));
  r = run("train " + (dir / "tok.yaml").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto run_dir = (dir / "tok").string();

  r = run("generate " + run_dir + " --prompt 'In the' --tokens 12 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto line = r.out.substr(r.out.rfind("In the"));
  EXPECT_GT(line.size(), std::string("In the\n").size()) << r.out;
  EXPECT_EQ(bitqat::data::invalid_utf8_offset(line), std::nullopt) << line;
  // Greedy is deterministic; sampling with a seed too.
  EXPECT_EQ(run("generate " + run_dir + " --prompt 'In the' --tokens 12 --temperature 0").out, r.out);
  // The window is counted in tokens: "th" 70 times is 70 tokens (140 bytes).
  std::string ths;
  for (int i = 0; i < 70; ++i) ths += "th";
  r = run("generate " + run_dir + " --prompt " + ths + " --tokens 2 --temperature 0");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("note: the prompt has 70 tokens and the model's window (model.max_seq_len) is 64: the model "
                       "sees only the prompt's last 64 tokens"),
            std::string::npos)
      << r.out;
  // Not UTF-8: refused with the offset.
  r = run("generate " + run_dir + " --prompt \"$(printf 'ab\\377')\" --tokens 2");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--prompt: byte 0xff at offset 2 starts no valid UTF-8 sequence"), std::string::npos) << r.out;

  r = run("eval " + run_dir + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = last_json_line(r.out);
  EXPECT_GT(j["val_loss"].get<double>(), 0.0);
  EXPECT_FALSE(j.contains("val_bpb"));  // tokens, not bytes

  // From scratch on the same shards: no tokenizer to encode a prompt with.
  bitqat::core::write_file_atomic((dir / "scratch.yaml").string(), yaml("scratch", ""));
  r = run("train " + (dir / "scratch.yaml").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("generate " + (dir / "scratch").string() + " --prompt 'In the'");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find((dir / "scratch").string() + ": this run was trained on token ids (data.kind shards, vocabulary "
                                                      "260) from scratch: it has no init_from"),
            std::string::npos)
      << r.out;
  fs::remove_all(dir);
}

TEST(Cli, GgufExportRefusesRelu2GluUnlessForced) {
  const auto dir = dir_with_corpus("bitqat_cli_gguf_", 100);
  auto r =
      run("train configs/quickstart.yaml --set run.dir=" + dir.string() +
          " --set run.name=glu --set data.path=" + (dir / "t.txt").string() +
          " --set model.ffn=relu2_glu --set train.steps=4 --set train.batch_size=2 --set data.seq_len=16"
          " --set model.max_seq_len=16 --set model.dim=64 --set model.n_layers=1 --set model.ffn_dim=64"
          " --set train.eval_every=0 --set checkpoint.every=4 --set optim.lr.warmup_steps=1 --set device.type=cpu");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto out = (dir / "m.gguf").string();
  r = run("export " + (dir / "glu").string() + " --format gguf --gguf-type q2_0 --out " + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("model.ffn = relu2_glu: llama.cpp's bitnet and llama graphs compute a SiLU-gated FFN"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("--gguf-force-relu2"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out));
  r = run("export " + (dir / "glu").string() + " --format gguf --gguf-type q2_0 --gguf-force-relu2 --out " + out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("llama.cpp will not compute what was trained"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out));
  fs::remove_all(dir);
}

TEST(Cli, OnednnRunsWithoutAmxUnlessTheUserChooses) {
  // core/cpu_isa.hpp: bitqat caps oneDNN (at::_int_mm's int8 gemm) below AMX unless
  // ONEDNN_MAX_CPU_ISA is set. oneDNN's verbose mode prints the instruction set it runs with and
  // each primitive it executes.
  const auto dir = dir_with_corpus("bitqat_cli_onednn_", 50);
  const std::string train = "train configs/quickstart.yaml --set run.dir=" + dir.string() +
                            " --set data.path=" + (dir / "t.txt").string() +
                            " --set train.steps=4 --set train.batch_size=2 --set data.seq_len=16"
                            " --set model.max_seq_len=16 --set model.dim=32 --set model.n_layers=1"
                            " --set model.ffn_dim=64 --set train.eval_every=0 --set checkpoint.every=0"
                            " --set optim.lr.warmup_steps=1 --set device.type=cpu";
  const auto isa_line = [](const std::string& out) {
    const auto at = out.find(",info,cpu,isa:");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  auto r = run(train + " --set run.name=capped", "env -u ONEDNN_MAX_CPU_ISA ONEDNN_VERBOSE=1");
  ASSERT_EQ(r.code, 0) << r.out;
  // bitlinear/quantized_linear.cpp multiplies the codes with at::_int_mm, which calls oneDNN's s8 x s8
  // -> s32 gemm API, only on CPUs with AVX-512 VNNI; elsewhere as float32 by sgemm, and no oneDNN int8
  // gemm runs (the same predicate as there). A CPU without VNNI has no AMX either, so there is no cap
  // to check there.
  const bool cpu_has_vnni = at::cpu::is_avx512_vnni_supported();
  const bool int8_gemm_ran = r.out.find(",primitive,exec,cpu,gemm_api,,undef,src_s8:") != std::string::npos;
  ASSERT_EQ(int8_gemm_ran, cpu_has_vnni)
      << "AVX-512 VNNI: " << cpu_has_vnni << ", oneDNN int8 gemm ran: " << int8_gemm_ran;
  if (!cpu_has_vnni) {
    fs::remove_all(dir);
    return;
  }
  const auto capped = isa_line(r.out);
  ASSERT_FALSE(capped.empty()) << r.out.substr(0, 2000);
  EXPECT_EQ(capped.find("AMX"), std::string::npos) << capped;
  r = run(train + " --set run.name=all", "ONEDNN_MAX_CPU_ISA=ALL ONEDNN_VERBOSE=1");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto all = isa_line(r.out);
  const bool cpu_has_amx = bitqat::testing::run_command("grep -qw amx_int8 /proc/cpuinfo").code == 0;
  EXPECT_EQ(all.find("AMX") != std::string::npos, cpu_has_amx) << all;
  fs::remove_all(dir);
}

TEST(Cli, QuantizeThenEvalAndFineTune) {
  // train (full precision) -> quantize (data-free ternary) -> eval agrees -> fine-tune from it.
  const auto dir = dir_with_corpus("bitqat_cli_q_", 300);
  const std::string small =
      " --set data.path=" + (dir / "t.txt").string() +
      " --set train.batch_size=4 --set data.seq_len=32 --set model.max_seq_len=32 --set model.dim=32"
      " --set model.n_layers=1 --set model.ffn_dim=64 --set train.eval_batches=2 --set device.type=cpu";
  // The walk-through's full-precision config, shrunk.
  auto r = run("train configs/kjv_fp_small.yaml --set run.dir=" + dir.string() +
               " --set run.name=fp --set train.steps=4 --set train.eval_every=4 --set checkpoint.every=4"
               " --set optim.lr.warmup_steps=1" +
               small);
  ASSERT_EQ(r.code, 0) << r.out;

  r = run("quantize " + (dir / "fp").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat quantize: error: --out is required"), std::string::npos) << r.out;
  r = run("quantize " + (dir / "fp").string() + " --out " + (dir / "q").string() + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto q = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(q["source_step"], 4);
  EXPECT_EQ(q["quantized_layers"], 6);
  r = run("eval " + (dir / "q").string() + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto e = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_NEAR(e["val_loss"].get<double>(), q["val_loss"].get<double>(), 1e-6);
  r = run("quantize " + (dir / "fp").string() + " --out " + (dir / "q").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("already holds checkpoints"), std::string::npos) << r.out;

  // The shipped linear-warm-up recipe, shrunk, starting from the full-precision run.
  r = run("train configs/finetune_linear.yaml --set init_from=" + (dir / "fp").string() +
          " --set run.dir=" + dir.string() +
          " --set run.name=ft --set train.steps=4 --set train.eval_every=4 --set optim.lr.warmup_steps=1" +
          " --set quant.lambda_w.end=2 --set quant.lambda_a.end=2" + small);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("initialised"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(bitqat-run)"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

// Every input a user can type gets a clear answer: the issue's list of inputs that used to end as
// `internal error` (exit 1) or succeed wrongly, each with its message or its right value.
TEST(Cli, UserInputsGetAClearAnswer) {
  const auto dir = dir_with_corpus("bitqat_cli_in_", 300);
  const std::string run_dir = (dir / "cli").string();
  const std::string sets = " --set run.dir=" + dir.string() +
                           " --set run.name=cli --set data.path=" + (dir / "t.txt").string() +
                           " --set train.batch_size=4 --set data.seq_len=32 --set model.max_seq_len=32"
                           " --set model.dim=32 --set model.n_layers=1 --set model.ffn_dim=64 --set train.eval_every=8"
                           " --set checkpoint.every=8 --set train.log_every=4 --set optim.lr.warmup_steps=1"
                           " --set device.type=cpu --set 'quant.lambda_w={kind: linear, end: 16}'"
                           " --set 'quant.lambda_a={kind: linear, end: 16}'";
  auto r = run("train configs/quickstart.yaml --set train.steps=8" + sets);
  ASSERT_EQ(r.code, 0) << r.out;

  // A run directory that cannot be created (a file is in its way): the path and the reason, exit 2.
  std::ofstream((dir / "afile").string()) << "x";
  r = run("train configs/quickstart.yaml --set train.steps=8" + sets + " --set run.dir=" + (dir / "afile").string());
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("bitqat train: error: filesystem error: cannot create directories: Not a directory"),
            std::string::npos)
      << r.out;
  r = run("quantize " + (dir / "no_such.yaml").string() + " --out " + (dir / "q").string());
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find((dir / "no_such.yaml").string() + ": no such run directory or config file"), std::string::npos)
      << r.out;

  // Resuming a finished run: nothing to train, said so; below it: an error; above it: the horizon moves.
  r = run("train configs/quickstart.yaml --resume --set train.steps=8" + sets);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing to train: " + run_dir + " is already at step 8 = train.steps"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("last loss 0.0000"), std::string::npos) << r.out;
  r = run("train configs/quickstart.yaml --resume --set train.steps=4" + sets);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("train.steps = 4 is below the step of the checkpoint to resume, 8"), std::string::npos) << r.out;

  // generate
  r = run("generate " + run_dir + " --prompt ''");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat generate: error: --prompt '': expected a prompt of at least one byte"),
            std::string::npos)
      << r.out;
  r = run("generate " + run_dir + " --prompt In --tokens 0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--tokens: '0': expected an integer in [1, 16777216]"), std::string::npos) << r.out;
  r = run("generate " + run_dir + " --prompt In --temperature -1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--temperature: '-1': expected a finite number in [0, 1000000]"), std::string::npos) << r.out;
  // Temperature 0 is greedy; a tiny positive one (1e-40, whose logits / T used to overflow) is greedy too.
  const auto greedy = run("generate " + run_dir + " --prompt In --tokens 20 --temperature 0");
  ASSERT_EQ(greedy.code, 0) << greedy.out;
  const auto tiny = run("generate " + run_dir + " --prompt In --tokens 20 --temperature 1e-40");
  ASSERT_EQ(tiny.code, 0) << tiny.out;
  EXPECT_EQ(tiny.out.substr(tiny.out.rfind("In")), greedy.out.substr(greedy.out.rfind("In")));
  // A prompt longer than the model's window: what is kept is stated.
  r = run("generate " + run_dir + " --prompt '" + std::string(40, 'a') + "' --tokens 2 --temperature 0");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("note: the prompt has 40 bytes and the model's window (model.max_seq_len) is 32: the model "
                       "sees only the prompt's last 32 bytes"),
            std::string::npos)
      << r.out;

  // eval: batches beyond the validation split, and the lambdas in the JSON
  r = run("eval " + run_dir + " --batches 9223372036854775807");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--batches 9223372036854775807: the validation split of " + run_dir + " holds "),
            std::string::npos)
      << r.out;
  r = run("eval " + run_dir + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_DOUBLE_EQ(j["lambda_w"].get<double>(), 7.0 / 16.0);  // the ramp's value at the last step, 7
  r = run("eval " + run_dir + " --json --fully-quantized");
  ASSERT_EQ(r.code, 0) << r.out;
  j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j["lambda_w"], 1.0);
  EXPECT_EQ(j["lambda_a"], 1.0);

  // export says when the checkpoint was not fully quantized; from another directory it reads no data.
  bitqat::core::write_file_atomic((dir / "t.txt").string(), "");  // the training data is gone
  r = bitqat::testing::run_command("cd / && " + std::string(BITQAT_BINARY_DIR) + "/bitqat export " + run_dir +
                                   " --format packed --out " + (dir / "packed").string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("note: " + run_dir +
                       "/checkpoints/step_00000008 (step 8) was trained at lambda_w 0.4375, "
                       "lambda_a 0.4375; every export is the fully quantized model"),
            std::string::npos)
      << r.out;
  r = bitqat::testing::run_command("cd / && " + std::string(BITQAT_BINARY_DIR) + "/bitqat generate " + run_dir +
                                   " --prompt In --tokens 4");
  EXPECT_EQ(r.code, 0) << r.out;

  // Configs: an impossible batch, a number beyond its type, a repeated key.
  r =
      run("train configs/quickstart.yaml --set train.batch_size=1048576 --set data.seq_len=1048576 --set "
          "model.max_seq_len=1048576 --set run.dir=" +
          dir.string() + " --set run.name=huge --set device.type=cpu");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("bitqat train: error: the memory plan needs "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the biggest term is saved activations"), std::string::npos) << r.out;
  r = run("train configs/quickstart.yaml --set train.grad_accum=1e10");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("train.grad_accum = 1e10: expected an integer in [-2147483648, 2147483647]"), std::string::npos)
      << r.out;
  bitqat::core::write_file_atomic((dir / "twice.yaml").string(), "train:\n  steps: 2\n  steps: 5\n");
  r = run("train " + (dir / "twice.yaml").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("twice.yaml:3: train.steps is given twice (first at line 2, again at line 3)"),
            std::string::npos)
      << r.out;
  fs::remove_all(dir);
}

// Image generation end to end on tiny models: train a DiT and a classifier, sample a grid, eval with
// the quality metric, ternarize data-free, export packed and sample from the export; and the bad
// inputs of sample and eval (a class out of range, zero steps, a run that is not a DiT).
TEST(Cli, DiffusionTransformerSampleEvalQuantizeExport) {
  const auto dir = fs::temp_directory_path() / ("bitqat_cli_dit_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string d = dir.string();
  const std::string tiny =
      " --set run.dir=" + d +
      " --set model.dim=16 --set model.n_layers=1 --set model.n_heads=2 --set model.mlp_dim=32"
      " --set model.patch_size=7 --set train.steps=3 --set train.batch_size=8 --set train.eval_every=3"
      " --set train.eval_batches=2 --set checkpoint.every=3 --set optim.lr.warmup_steps=1 --set device.type=cpu";
  auto r = run("train configs/fmnist_dit.yaml --set run.name=dit" + tiny);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("samples/s"), std::string::npos) << r.out;
  r = run("train configs/fashion_mnist_fp.yaml --set run.dir=" + d +
          " --set run.name=clf --set train.steps=3 --set train.batch_size=16 --set train.eval_every=3"
          " --set train.eval_batches=1 --set checkpoint.every=3 --set optim.lr.warmup_steps=1 --set device.type=cpu");
  ASSERT_EQ(r.code, 0) << r.out;

  r = run("sample " + d + "/dit --n 2 --steps 2 --out " + d + "/g.png");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("wrote " + d + "/g.png: 20 images (10 x 2 grid, 62 x 302 pixels)"), std::string::npos) << r.out;

  r = run("eval " + d + "/dit --json --classifier " + d + "/clf --samples 20 --steps 2 --cfg 1.5 --solver euler");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = last_json_line(r.out);
  EXPECT_TRUE(j["val_loss"].is_number());
  EXPECT_GE(j["frechet_distance"].get<double>(), 0.0);
  EXPECT_GE(j["classifier_accuracy"].get<double>(), 0.0);
  EXPECT_LE(j["classifier_accuracy"].get<double>(), 1.0);
  EXPECT_EQ(j["samples"], 20);
  EXPECT_EQ(j["reference_images"], 10000);
  EXPECT_EQ(j["sampler"]["solver"], "euler");
  r = run("eval " + d + "/dit --json --samples 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(last_json_line(r.out).contains("frechet_distance"));

  r = run("quantize " + d + "/dit --out " + d + "/dq --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(last_json_line(r.out)["quantized_layers"], 5);
  r = run("export " + d + "/dq --format packed --out " + d + "/dq-packed");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("5 quantized layers"), std::string::npos) << r.out;
  r = run("sample " + d + "/dq-packed --class 3 --n 4 --steps 2 --out " + d + "/p.png");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("4 images (1 x 4 grid"), std::string::npos) << r.out;

  // Bad inputs: one line, exit 2.
  r = run("sample " + d + "/dit --class 10 --out " + d + "/x.png");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat sample: error: --class 10: the model has classes 0..9 (or all)"), std::string::npos)
      << r.out;
  r = run("sample " + d + "/dit --class shoes --out " + d + "/x.png");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("'shoes': expected a class index or all"), std::string::npos) << r.out;
  r = run("sample " + d + "/dit --steps 0 --out " + d + "/x.png");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--steps: '0': expected an integer in [1, 1048576]"), std::string::npos) << r.out;
  r = run("sample " + d + "/clf --out " + d + "/x.png");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bitqat sample: error: " + d +
                       "/clf: a model.kind cnn run; sample needs a diffusion transformer (model.kind dit)"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(d + "/x.png"));
  r = run("eval " + d + "/clf --samples 5");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("apply to diffusion transformer runs; " + d + "/clf is a model.kind cnn run"), std::string::npos)
      << r.out;
  r = run("eval " + d + "/dit --classifier " + d + "/dit --samples 4");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--classifier " + d + "/dit: a dit run on data.kind fashion_mnist"), std::string::npos) << r.out;
  r = run("eval " + d + "/dit --classifier " + d + "/none");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--classifier " + d + "/none: no such run"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

// docs/config.md is `bitqat config --reference`, so the document cannot fall behind the parser; and
// `bitqat config CONFIG` prints the config with its defaults, which loads back as the same config.
TEST(Cli, ConfigReferenceIsDocsConfigMdAndConfigPrintsTheResolvedConfig) {
  auto r = run("config --reference");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream doc(std::string(BITQAT_SOURCE_DIR) + "/docs/config.md", std::ios::binary);
  const std::string expected((std::istreambuf_iterator<char>(doc)), std::istreambuf_iterator<char>());
  EXPECT_EQ(r.out, expected) << "docs/config.md is stale: build/bitqat config --reference > docs/config.md";
  for (const char* row :
       {"| `train.max_bad_steps` | integer |", "| `optim.lr.warmup_steps` *(kind: warmup_cosine)* |",
        "| `quant.weight.granularity` | one of | `per_tensor` | per_channel\\|per_group\\|per_kernel\\|per_tensor |",
        "| `model.n_kv_heads` *(kind: lm)* |", "| `checkpoint.keep_last` | integer |"}) {
    EXPECT_NE(r.out.find(row), std::string::npos) << row;
  }
  // Any text file serves as the data: config checks that it exists and reads none of it.
  const std::string quickstart = std::string(BITQAT_SOURCE_DIR) +
                                 "/configs/quickstart.yaml --set data.path=" + std::string(BITQAT_SOURCE_DIR) +
                                 "/README.md";
  r = run("config " + quickstart + " --set train.steps=700");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("  steps: 700\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max_bad_steps: "), std::string::npos) << r.out;  // a default the file does not set
  EXPECT_NE(r.out.find("  activation_checkpointing: none\n"), std::string::npos) << r.out;
  r = run("config " + quickstart + " --set 'train.activation_checkpointing={every_n: 2}'");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("  activation_checkpointing:\n    every_n: 2\n"), std::string::npos) << r.out;
  r = run("config " + quickstart + " --set train.steps=0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("train.steps = 0: expected"), std::string::npos) << r.out;
  r = run("config --reference " + quickstart);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--reference takes no CONFIG"), std::string::npos) << r.out;
}

// `bitqat plan`: the terms per rank of a shipped config (neither its data nor its init_from exist here),
// and exit 2 naming the total, the limit's key and the biggest term when the plan exceeds it.
TEST(Cli, PlanPrintsTheTermsAndRefusesWhatDoesNotFit) {
  const std::string cfg = std::string(BITQAT_SOURCE_DIR) + "/configs/llama3_8b_ternary_x8.yaml";
  auto r = run("plan " + cfg + " --world-size 8 --set device.memory_gb=79");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("plan: dist.shard parameters, world size 8, N = 8030261248 trainable elements (0 frozen), "
                        "S = 1003782656 per rank, padding 0, 33 buckets; GPU path",
                        0),
            0u)
      << r.out;
  for (const char* term : {"  parameters ", "  gradients ", "  optimizer state ", "  saved activations ",
                           "  communication buffers ", "  largest transient ", "  quantized weight copies ",
                           "  total ", "  set-up peak ", "  checkpoint host RAM ", "  limit "}) {
    EXPECT_NE(r.out.find(term), std::string::npos) << term;
  }
  EXPECT_EQ(run("plan " + cfg + " --world-size 8 --set device.memory_gb=79").out, r.out);  // deterministic
  r = run("plan " + cfg + " --world-size 8 --set dist.shard=none --set device.memory_gb=79");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("bitqat plan: error: the memory plan needs 190.56 GiB (204614608896 bytes) per rank (dist.shard "
                       "none, world size 8), more than the 79.00 GiB of --set device.memory_gb=79: device.memory_gb = "
                       "79; the biggest term is optimizer state, 59.83 GiB"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("try dist.shard optimizer (now none)"), std::string::npos) << r.out;
  // Activation checkpointing is the config's key, through --set like any other.
  r = run("plan " + cfg + " --set train.activation_checkpointing=sometimes");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--set train.activation_checkpointing=sometimes: train.activation_checkpointing = sometimes: "),
            std::string::npos)
      << r.out;
  r = run("plan " + cfg + " --world-size 8 --set dist.shard=gradients --set device.memory_gb=1000 --set "
          "'train.activation_checkpointing={every_n: 2}'");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("activation checkpointing every_n: 2\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("16 blocks x 780828672 + 16 checkpointed x 67108864"), std::string::npos) << r.out;
  EXPECT_NE(run("plan " + cfg + " --checkpointing full").code, 0);  // no such option any more
  r = run("plan " + cfg + " --world-size 0");
  EXPECT_EQ(r.code, 2) << r.out;
}
