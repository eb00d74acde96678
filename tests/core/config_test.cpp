#include "core/config.hpp"

#include <gtest/gtest.h>

#include <string>

#include "tests/user_error.hpp"

using bitqat::core::ConfigError;
using bitqat::core::Node;

namespace {

const auto error_of = bitqat::testing::error_of<ConfigError>;

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

TEST(Config, AKeyGivenTwiceAtAnyDepthNamesThePathAndBothLines) {
  // The cases: train.steps given twice ran with the first value; a second quant: section was
  // ignored. Both are errors now, naming the key path and both lines.
  EXPECT_EQ(error_of([] { Node::load_string("train:\n  steps: 2\n  batch_size: 4\n  steps: 5\n", "d.yaml"); }),
            "d.yaml:4: train.steps is given twice (first at line 2, again at line 4); expected each key once");
  EXPECT_EQ(error_of([] { Node::load_string("quant: {weight: {type: ternary}}\nrun: {}\nquant: {}\n", "d.yaml"); }),
            "d.yaml:3: quant is given twice (first at line 1, again at line 3); expected each key once");
  EXPECT_EQ(error_of([] { Node::load_string("a:\n  b:\n    - {c: 1, c: 2}\n", "d.yaml"); }),
            "d.yaml:3: a.b[0].c is given twice (first at line 3, again at line 3); expected each key once");
  // The same key in two different sections is fine.
  EXPECT_EQ(error_of([] { Node::load_string("a: {x: 1}\nb: {x: 2}\n", "d.yaml"); }), "");
}

TEST(Config, AMappingUsedAsAKeyIsAConfigError) {
  EXPECT_EQ(error_of([] { Node::load_string("train:\n  {steps: 2}: 3\n", "d.yaml"); }),
            "d.yaml:2: train: a mapping is used as a key; expected a plain key name");
  EXPECT_EQ(error_of([] { Node::load_string("[a, b]: 1\n", "d.yaml"); }),
            "d.yaml:1: (top level): a sequence is used as a key; expected a plain key name");
  // Through --set as well.
  EXPECT_EQ(error_of([] { Node::load_string("train: {}\n", "d.yaml", {"train={{x: 1}: 2}"}); }),
            "--set train={{x: 1}: 2}:1: train: a mapping is used as a key; expected a plain key name");
}

TEST(Config, IntegersBeyondTheirTypeAreRefusedWithTheRange) {
  const auto root = Node::load_string("train: {grad_accum: 1e10, steps: 1e3, big: 99999999999999999999}\n", "d.yaml");
  const auto t = root.child("train");
  EXPECT_EQ(error_of([&] { t.get<int>("grad_accum", 1); }),
            "d.yaml:1: train.grad_accum = 1e10: expected an integer in [-2147483648, 2147483647]");
  EXPECT_EQ(t.get<int>("steps", 0), 1000);  // an integral float in range is still accepted
  EXPECT_EQ(error_of([&] { t.get<int64_t>("big", 0); }),
            "d.yaml:1: train.big = 99999999999999999999: expected an integer in [-9223372036854775808, "
            "9223372036854775807]");
}
