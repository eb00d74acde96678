// Every shipped config parses and validates (the shards of the GPU and SmolLM2 configs, which a setup
// step prepares, are replaced by temporary ones).
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "data/source.hpp"
#include "training/config.hpp"

namespace fs = std::filesystem;

namespace {

// The ConfigError config text `t` with overrides `sets` raises (as file a.yaml, files unchecked), or
// "(no error)".
std::string error(const std::string& t, const std::vector<std::string>& sets) {
  try {
    bitqat::training::Config::load_string(t, "a.yaml", sets, /*check_files=*/false);
  } catch (const bitqat::core::ConfigError& e) {
    return std::string(e.what());
  }
  return std::string("(no error)");
}

}  // namespace

TEST(ShippedConfigs, AllValidate) {
  const auto dir = fs::temp_directory_path() / ("bitqat_cfgs_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  bitqat::data::write_shard((dir / "s.bin").string(), std::vector<uint16_t>(5000, 7));
  int n = 0;
  for (const auto& f : bitqat::core::glob_files(std::string(BITQAT_SOURCE_DIR) + "/configs/*.yaml")) {
    std::vector<std::string> sets;
    if (f.find("lm_gpu") != std::string::npos || f.find("smollm2") != std::string::npos ||
        f.find("llama3") != std::string::npos) {
      sets = {"data.train=" + (dir / "s.bin").string(), "data.val=" + (dir / "s.bin").string()};
    }
    EXPECT_NO_THROW(bitqat::training::Config::load_file(f, sets)) << f;
    ++n;
  }
  EXPECT_GE(n, 5);
  fs::remove_all(dir);
}

// A diffusion transformer generates the data's images: its shape and classes must be the data's.
TEST(DiTConfig, MustMatchTheImageData) {
  auto err = [](const std::string& model, const std::string& data) {
    try {
      bitqat::training::Config::load_string("model: " + model + "\ndata: " + data + "\n", "d.yaml");
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(err("{kind: dit}", "{kind: fashion_mnist}"), "(no error)");
  EXPECT_EQ(
      err("{kind: dit, channels: 3}", "{kind: fashion_mnist}"),
      "d.yaml:1: model.channels = 3: data.kind fashion_mnist has images of 1 x 28 x 28 (channels x height x width)");
  EXPECT_EQ(
      err("{kind: dit, height: 32, width: 32}", "{kind: fashion_mnist}"),
      "d.yaml:1: model.height = 32: data.kind fashion_mnist has images of 1 x 28 x 28 (channels x height x width)");
  EXPECT_EQ(err("{kind: dit, num_classes: 12}", "{kind: fashion_mnist}"),
            "d.yaml:1: model.num_classes = 12: expected the data's 10 classes");
  EXPECT_NE(err("{kind: dit}", "{kind: text, path: " + std::string(BITQAT_SOURCE_DIR) + "/README.md}")
                .find("model.kind = dit: a diffusion transformer needs image data, got data.kind text"),
            std::string::npos);
}

namespace {

// The leaf key paths of a resolved config ("train.steps", "optim.lr.peak").
void leaf_keys(const YAML::Node& n, const std::string& path, std::set<std::string>* out) {
  if (!n.IsMap()) {
    out->insert(path);
    return;
  }
  for (const auto& kv : n) {
    const auto k = kv.first.as<std::string>();
    leaf_keys(kv.second, path.empty() ? k : path + "." + k, out);
  }
}

}  // namespace

// The resolved config is written from the same declarations the parse reads: loading it gives the
// same config (the same resolved text, the same checkpoint hash), and every key it holds is in the
// config reference.
TEST(ResolvedConfig, LoadsBackToItselfAndEveryKeyIsInTheReference) {
  const auto dir = fs::temp_directory_path() / ("bitqat_resolved_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  bitqat::data::write_shard((dir / "s.bin").string(), std::vector<uint16_t>(5000, 7));
  std::set<std::string> reference;
  for (const auto& r : bitqat::training::Config::reference()) reference.insert(r.key);
  int n = 0;
  for (const auto& f : bitqat::core::glob_files(std::string(BITQAT_SOURCE_DIR) + "/configs/*.yaml")) {
    std::vector<std::string> sets;
    if (f.find("lm_gpu") != std::string::npos || f.find("smollm2") != std::string::npos ||
        f.find("llama3") != std::string::npos) {
      sets = {"data.train=" + (dir / "s.bin").string(), "data.val=" + (dir / "s.bin").string()};
    }
    // init_from and distill.teacher name models a setup step downloads; the files are not read here.
    const auto c = bitqat::training::Config::load_file(f, sets, /*check_files=*/false);
    const auto text = bitqat::core::to_yaml_string(c.resolved());
    const auto back = bitqat::training::Config::load_string(text, "resolved.yaml", {}, /*check_files=*/false);
    EXPECT_EQ(bitqat::core::to_yaml_string(back.resolved()), text) << f;
    EXPECT_EQ(back.compat_hash(), c.compat_hash()) << f;
    std::set<std::string> keys;
    leaf_keys(c.resolved(), "", &keys);
    for (const auto& k : keys) {
      EXPECT_TRUE(reference.count(k)) << f << ": " << k << " is written but not in the reference";
    }
    ++n;
  }
  EXPECT_GE(n, 5);
  // Defaults are spelled out: a config of only a model and data resolves to every key.
  const auto minimal = bitqat::training::Config::load_string("model: {kind: cnn}\ndata: {kind: fashion_mnist}\n",
                                                             "m.yaml", {}, /*check_files=*/false);
  const auto r = minimal.resolved();
  EXPECT_EQ(r["train"]["steps"].as<int64_t>(), 1000);
  EXPECT_EQ(r["device"]["type"].as<std::string>(), "auto");
  EXPECT_EQ(r["model"]["channels1"].as<int64_t>(), 32);
  EXPECT_EQ(r["data"]["dir"].as<std::string>(), "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(r["optim"]["lr"]["kind"].as<std::string>(), "constant");
  EXPECT_EQ(r["optim"]["lr"]["value"].as<double>(), 1e-3);
  fs::remove_all(dir);
}

// train.activation_checkpointing takes a name or a mapping: what it holds is written back into the
// resolved config, and a bad value names its location, the value and what is expected.
TEST(TrainConfig, ActivationCheckpointingIsANameOrAMapping) {
  const std::string text = "model: {kind: lm}\ndata: {kind: text, path: " + std::string(BITQAT_SOURCE_DIR) +
                           "/README.md}\ntrain: {steps: 10, activation_checkpointing: none}\n";
  auto load = [&](const std::vector<std::string>& sets) {
    return bitqat::training::Config::load_string(text, "a.yaml", sets);
  };
  EXPECT_EQ(load({}).train.activation_checkpointing.every_n, 0);
  EXPECT_EQ(load({}).resolved()["train"]["activation_checkpointing"].as<std::string>(), "none");
  const auto full = load({"train.activation_checkpointing=full"});
  EXPECT_EQ(full.train.activation_checkpointing.every_n, 1);
  EXPECT_EQ(full.resolved()["train"]["activation_checkpointing"].as<std::string>(), "full");
  const auto every = load({"train.activation_checkpointing={every_n: 2}"});
  EXPECT_EQ(every.train.activation_checkpointing.every_n, 2);
  const auto resolved = bitqat::core::to_yaml_string(every.resolved());
  EXPECT_NE(resolved.find("  activation_checkpointing:\n    every_n: 2\n"), std::string::npos) << resolved;
  const auto back = bitqat::training::Config::load_string(resolved, "resolved.yaml", {}, /*check_files=*/false);
  EXPECT_EQ(back.train.activation_checkpointing.every_n, 2);

  const std::string expected = "expected none, full or a mapping {every_n: N} (N an integer >= 1)";
  EXPECT_EQ(error(text, {"train.activation_checkpointing=fast"}),
            "--set train.activation_checkpointing=fast: train.activation_checkpointing = fast: " + expected);
  std::string in_file = text;
  in_file.replace(in_file.find("activation_checkpointing: none"), 30, "activation_checkpointing: {every_n: 0}");
  EXPECT_EQ(error(in_file, {}),
            "a.yaml:3: train.activation_checkpointing.every_n = 0: expected an integer >= 1 (1: every block, as full)");
  EXPECT_EQ(error(text, {"train.activation_checkpointing={every_n: 2.5}"}),
            "--set train.activation_checkpointing={every_n: 2.5}: train.activation_checkpointing.every_n = 2.5: "
            "expected an integer");
  EXPECT_NE(error(text, {"train.activation_checkpointing={every_n: 2, layers: 3}"}).find("unknown key 'layers'"),
            std::string::npos);
  // A CNN has no transformer blocks to recompute.
  EXPECT_EQ(error("model: {kind: cnn}\ndata: {kind: fashion_mnist}\ntrain:\n  activation_checkpointing: full\n", {}),
            "a.yaml:4: train.activation_checkpointing = full: activation checkpointing recomputes transformer blocks, "
            "and model.kind cnn has none; use none (or an lm or dit model)");
  EXPECT_EQ(error("model: {kind: cnn}\ndata: {kind: fashion_mnist}\ntrain: {activation_checkpointing: none}\n", {}),
            "(no error)");
  bool in_reference = false;
  for (const auto& r : bitqat::training::Config::reference()) {
    if (r.key == "train.activation_checkpointing") {
      in_reference = true;
      EXPECT_EQ(r.fallback, "none");
      EXPECT_EQ(r.type, "name or mapping");
    }
  }
  EXPECT_TRUE(in_reference);
}

TEST(QuantConfig, LearnedScalesAreRefusedWhereNothingCanLearnThem) {
  const std::string lm =
      "model: {kind: lm, dim: 32, n_layers: 2, n_heads: 4}\ndata: {kind: text, path: t.txt, seq_len: 16}\n"
      "quant:\n  weight: {type: ternary, granularity: per_channel, scale: learned}\n";
  EXPECT_EQ(error(lm, {}), "(no error)");
  EXPECT_EQ(error(lm, {"dist.shard=gradients"}), "(no error)");
  EXPECT_EQ(error(lm, {"dist.shard=parameters"}),
            "a.yaml:4: quant.weight.scale = learned with dist.shard = parameters: sharded parameters gather the "
            "weights as 2-bit codes with absmean scales; use dist.shard: gradients (or optimizer), or "
            "quant.weight.scale: absmean");
  EXPECT_EQ(error("model: {kind: cnn}\ndata: {kind: fashion_mnist}\n"
                  "quant:\n  weight: {type: ternary, granularity: per_channel, scale: learned}\n",
                  {}),
            "a.yaml:4: quant.weight.scale = learned with model.kind cnn: learned scales are for BitLinear layers (lm, "
            "dit); a cnn's convolutions take absmean");
  EXPECT_EQ(error(lm, {"quant.weight.granularity=per_group"}),
            "a.yaml:4: quant.weight.scale = learned: expected absmean, or learned together with granularity: "
            "per_channel (a learned scale is one per output row; granularity is per_group)");
}
