#include "bitlinear/quant_config.hpp"

#include <gtest/gtest.h>

using namespace bitqat::bitlinear;
using bitqat::core::Node;

TEST(QuantConfig, DefaultsAndEveryField) {
  const auto d = quant_spec_from_yaml(Node::load_string("quant: {}\n", "q.yaml").child("quant"));
  EXPECT_EQ(d.weight.type, WeightQuant::kTernary);
  EXPECT_EQ(d.weight.granularity, Granularity::kPerTensor);
  EXPECT_EQ(d.act.type, ActQuant::kPerToken);
  EXPECT_EQ(d.act.bits, 8);
  const auto s = quant_spec_from_yaml(Node::load_string(
      "quant:\n  weight: {type: binary, granularity: per_group, group_size: 64, estimator: clipped, clip: 2.0}\n"
      "  activation: {type: per_tensor, bits: 4, estimator: clipped, clip: 0.9}\n  include: ['layers.*']\n",
      "q.yaml").child("quant"));
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
  auto err = [](const std::string& text) {
    try {
      quant_spec_from_yaml(Node::load_string(text, "q.yaml").child("quant"));
    } catch (const bitqat::core::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(err("quant:\n  weight: {type: trinary}\n"),
            "q.yaml:2: quant.weight.type = trinary: expected one of binary|none|ternary");
  EXPECT_EQ(err("quant:\n  activation:\n    bits: 9\n"), "q.yaml:3: quant.activation.bits = 9: expected a value in [2, 8]");
  EXPECT_EQ(err("quant:\n  weight:\n    sign: true\n"),
            "q.yaml:3: quant.weight.sign: unknown key 'sign'; expected one of: clip, eps, estimator, granularity, "
            "group_size, type");
}
