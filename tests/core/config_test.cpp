#include "core/config.hpp"

#include <gtest/gtest.h>

#include <string>

using bitqat::core::ConfigError;
using bitqat::core::Node;

namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

const char* kDoc =
    "run:\n"
    "  name: demo\n"
    "train:\n"
    "  steps: 100\n"
    "  lr: 0.001\n"
    "  flag: true\n"
    "  tags: [a, b]\n";

}  // namespace

TEST(Config, ReadsTypedValuesAndFallbacks) {
  const auto root = Node::load_string(kDoc, "x.yaml");
  const auto train = root.child("train");
  EXPECT_EQ(train.get<int>("steps", 0), 100);
  EXPECT_DOUBLE_EQ(train.get<double>("lr", 0.0), 0.001);
  EXPECT_TRUE(train.get<bool>("flag", false));
  EXPECT_EQ(train.get<int>("missing", 7), 7);
  EXPECT_EQ(train.get_strings("tags"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(root.child("run").require<std::string>("name"), "demo");
}

TEST(Config, WrongTypeNamesFileLineKeyAndValue) {
  const auto root = Node::load_string(kDoc, "x.yaml");
  const auto msg = error_of([&] { root.child("train").get<int>("lr", 0); });
  EXPECT_EQ(msg, "x.yaml:5: train.lr = 0.001: expected an integer");
}

TEST(Config, UnknownKeyIsAnError) {
  const auto root = Node::load_string(kDoc, "x.yaml");
  const auto msg = error_of([&] { root.child("train").allow_only({"steps", "lr", "flag"}); });
  EXPECT_EQ(msg, "x.yaml:7: train.tags: unknown key 'tags'; expected one of: flag, lr, steps");
}

TEST(Config, RangeAndChoiceChecks) {
  const auto root = Node::load_string(kDoc, "x.yaml");
  const auto t = root.child("train");
  EXPECT_EQ(error_of([&] { t.get_in<int>("steps", 1, 1, 50); }),
            "x.yaml:4: train.steps = 100: expected a value in [1, 50]");
  EXPECT_EQ(error_of([&] {
              root.child("run").get_choice("name", "a", {"a", "b"});
            }),
            "x.yaml:2: run.name = demo: expected one of a|b");
}

TEST(Config, OverridesGoThroughTheSameParserAndAreNamed) {
  const auto root = Node::load_string(kDoc, "x.yaml", {"train.steps=20", "model.dim=64"});
  EXPECT_EQ(root.child("train").get<int>("steps", 0), 20);
  EXPECT_EQ(root.child("model").get<int>("dim", 0), 64);
  const auto bad = Node::load_string(kDoc, "x.yaml", {"train.steps=abc"});
  EXPECT_EQ(error_of([&] { bad.child("train").get<int>("steps", 0); }),
            "--set train.steps=abc: train.steps = abc: expected an integer");
  EXPECT_NE(error_of([] { Node::load_string(kDoc, "x.yaml", {"nonsense"}); }).find("expected key.path=value"),
            std::string::npos);
  EXPECT_NE(error_of([] { Node::load_string(kDoc, "x.yaml", {"run.name.x=1"}); }).find("is a value, not a section"),
            std::string::npos);
}

TEST(Config, SyntaxErrorAndMissingFile) {
  EXPECT_EQ(error_of([] { Node::load_string("a: [1, 2\nb: 3\n", "bad.yaml"); }).rfind("bad.yaml:", 0), 0u);
  EXPECT_NE(error_of([] { Node::load_file("/nonexistent/cfg.yaml"); }).find("cannot open config file"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              Node::load_string(kDoc, "x.yaml").child("run").require<int>("seed");
            }).find("required key 'run.seed' is missing"),
            std::string::npos);
}

TEST(Config, AssignmentRebindsAndNeverWritesThrough) {
  const auto root = Node::load_string(kDoc, "x.yaml");
  Node a = root.child("run");
  a = root.child("missing");  // a missing section: must not throw or touch run:
  EXPECT_FALSE(a.defined());
  EXPECT_EQ(root.child("run").get<std::string>("name", ""), "demo");
  a = root.child("train");
  EXPECT_EQ(a.get<int>("steps", 0), 100);
  EXPECT_EQ(root.child("run").get<std::string>("name", ""), "demo");
}
