#include "bitlinear/quant_config.hpp"

#include <gtest/gtest.h>

using namespace bitqat::bitlinear;
using bitqat::core::Node;

namespace {

// The ConfigError a quant section raises, or "" when it parses.
std::string err(const std::string& text) {
  try {
    quant_spec_from_yaml(Node::load_string(text, "q.yaml").child("quant"));
  } catch (const bitqat::core::ConfigError& e) {
    return std::string(e.what());
  }
  return std::string();
}

}  // namespace

TEST(QuantConfig, DefaultsAndEveryField) {
  const auto d = quant_spec_from_yaml(Node::load_string("quant: {}\n", "q.yaml").child("quant"));
  EXPECT_EQ(d.weight.type, WeightQuant::kTernary);
  EXPECT_EQ(d.weight.granularity, Granularity::kPerTensor);
  EXPECT_EQ(d.act.type, ActQuant::kPerToken);
  EXPECT_EQ(d.act.bits, 8);
  const auto s = quant_spec_from_yaml(
      Node::load_string(
          "quant:\n  weight: {type: binary, granularity: per_group, group_size: 64, estimator: clipped, clip: 2.0}\n"
          "  activation: {type: per_tensor, bits: 4, estimator: clipped, clip: 0.9}\n  include: ['layers.*']\n",
          "q.yaml")
          .child("quant"));
  EXPECT_EQ(s.weight.type, WeightQuant::kBinary);
  EXPECT_EQ(s.weight.granularity, Granularity::kPerGroup);
  EXPECT_EQ(s.weight.group_size, 64);
  EXPECT_EQ(s.weight.estimator, Estimator::kClipped);
  EXPECT_DOUBLE_EQ(s.weight.clip, 2.0);
  EXPECT_EQ(s.act.type, ActQuant::kPerTensor);
  EXPECT_EQ(s.act.bits, 4);
  EXPECT_DOUBLE_EQ(s.act.clip, 0.9);
  YAML::Node out;
  quant_spec_to_yaml(s, &out);
  EXPECT_EQ(out["weight"]["granularity"].as<std::string>(), "per_group");
  EXPECT_EQ(out["activation"]["bits"].as<int>(), 4);
}

TEST(QuantConfig, ErrorsNameTheKey) {
  EXPECT_EQ(err("quant:\n  weight: {type: trinary}\n"),
            "q.yaml:2: quant.weight.type = trinary: expected one of binary|none|ternary");
  EXPECT_EQ(err("quant:\n  activation:\n    bits: 9\n"),
            "q.yaml:3: quant.activation.bits = 9: expected a value in [2, 8]");
  EXPECT_EQ(err("quant:\n  weight:\n    sign: true\n"),
            "q.yaml:3: quant.weight.sign: unknown key 'sign'; expected one of: clip, eps, estimator, granularity, "
            "group_size, scale, type");
}

TEST(QuantConfig, LearnedScalesArePerChannelOnQuantizedWeights) {
  auto parse = [](const std::string& text) {
    return quant_spec_from_yaml(Node::load_string(text, "q.yaml").child("quant"));
  };
  EXPECT_EQ(parse("quant: {}\n").weight.scale, ScaleSource::kAbsmean);
  const auto s = parse("quant:\n  weight: {type: ternary, granularity: per_channel, scale: learned}\n");
  EXPECT_EQ(s.weight.scale, ScaleSource::kLearned);
  YAML::Node out;
  quant_spec_to_yaml(s, &out);
  EXPECT_EQ(out["weight"]["scale"].as<std::string>(), "learned");
  EXPECT_EQ(err("quant:\n  weight:\n    scale: learned\n"),
            "q.yaml:3: quant.weight.scale = learned: expected absmean, or learned together with granularity: "
            "per_channel (a learned scale is one per output row; granularity is per_tensor)");
  EXPECT_EQ(err("quant:\n  weight: {type: none, granularity: per_channel, scale: learned}\n"),
            "q.yaml:2: quant.weight.scale = learned: expected absmean: weights of type none have no scale to learn");
  EXPECT_EQ(err("quant:\n  weight: {scale: lsq}\n"),
            "q.yaml:2: quant.weight.scale = lsq: expected one of absmean|learned");
}

TEST(QuantConfig, MoreErrorsNameTheKeyAndValue) {
  EXPECT_EQ(err("quant:\n  weight: {granularity: per_row}\n"),
            "q.yaml:2: quant.weight.granularity = per_row: expected one of "
            "per_channel|per_group|per_kernel|per_tensor");
  EXPECT_EQ(err("quant:\n  activation:\n    type: per_token\n    estimator: ste\n"),
            "q.yaml:4: quant.activation.estimator = ste: expected one of clipped|identity");
  EXPECT_EQ(err("quant:\n  activation: {type: int8}\n"),
            "q.yaml:2: quant.activation.type = int8: expected one of none|per_tensor|per_token");
  EXPECT_NE(err("quant:\n  weight: {group_size: 0}\n").find("quant.weight.group_size = 0: expected"),
            std::string::npos);
  EXPECT_NE(err("quant:\n  weight: {clip: -1}\n").find("quant.weight.clip = -1: expected"), std::string::npos);
  EXPECT_NE(err("quant:\n  activation: {eps: 0}\n").find("quant.activation.eps = 0: expected"), std::string::npos);
  EXPECT_NE(err("quant:\n  activation: {bits: eight}\n").find("quant.activation.bits = eight"), std::string::npos);
  // Keys of quant itself belong to the trainer and are not checked here.
  EXPECT_EQ(err("quant:\n  lambda_w: {kind: linear}\n  exclude: [lm_head]\n"), "");
}

TEST(QuantConfig, WrittenYamlReadsBackToTheSameSpec) {
  QuantSpec s;
  s.weight.type = WeightQuant::kBinary;
  s.weight.granularity = Granularity::kPerKernel;
  s.weight.group_size = 32;
  s.weight.estimator = Estimator::kClipped;
  s.weight.clip = 1.25;
  s.weight.eps = 1e-7;
  s.act.type = ActQuant::kNone;
  s.act.bits = 6;
  s.act.clip = 0.75;
  s.act.eps = 1e-4;
  YAML::Node quant;
  quant_spec_to_yaml(s, &quant);
  YAML::Node root;
  root["quant"] = quant;
  const auto r = quant_spec_from_yaml(Node::load_string(bitqat::core::to_yaml_string(root), "r.yaml").child("quant"));
  EXPECT_EQ(r.weight.type, s.weight.type);
  EXPECT_EQ(r.weight.granularity, s.weight.granularity);
  EXPECT_EQ(r.weight.group_size, 32);
  EXPECT_EQ(r.weight.estimator, Estimator::kClipped);
  EXPECT_EQ(r.weight.clip, 1.25);
  EXPECT_EQ(r.weight.eps, 1e-7);
  EXPECT_EQ(r.act.type, ActQuant::kNone);
  EXPECT_EQ(r.act.bits, 6);
  EXPECT_EQ(r.act.estimator, Estimator::kIdentity);
  EXPECT_EQ(r.act.clip, 0.75);
  EXPECT_EQ(r.act.eps, 1e-4);
}
