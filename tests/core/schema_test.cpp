// core::Schema: one declaration gives the parse (defaults, ranges, choices, checks, required and
// computed keys, unknown keys), the written values and the reference rows. Expected texts are
// written out by hand from the declarations below.
#include "core/schema.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"

using namespace bitqat::core;

namespace {

enum class Colour { kRed, kGreenish, kBlue };
constexpr std::array<EnumName<Colour>, 3> kColourNames = {
    {{Colour::kRed, "red"}, {Colour::kGreenish, "greenish"}, {Colour::kBlue, "blue"}}};

struct Toy {
  int64_t width = 8;
  int64_t height = 0;  // computed: 2 * width
  double rate = 0.5;
  bool on = true;
  uint64_t seed = 7;
  Colour colour = Colour::kBlue;
  std::string name = "toy";
  std::string path;
  std::vector<std::string> tags = {"a"};
  std::vector<int64_t> layers;
  Node schedule;
};

const Schema<Toy>& toy_schema() {
  static const Schema<Toy> s(
      {
          key("width", &Toy::width, "the width").range(1, 64),
          key("height", &Toy::height, "the height")
              .range(1, 1000)
              .computed([](const Toy& t) { return 2 * t.width; }, "2 * width"),
          key("rate", &Toy::rate, "a rate").range(0.0, 1.0),
          key("on", &Toy::on, "a switch"),
          key("seed", &Toy::seed, "a seed"),
          key("colour", &Toy::colour, "a colour").choices(kColourNames),
          key("name", &Toy::name, "a name")
              .check([](const std::string& v) { return v.find('/') == std::string::npos; }, "a name without '/'"),
          key("path", &Toy::path, "a path").required(),
          key("tags", &Toy::tags, "tags"),
          key("layers", &Toy::layers, "layers"),
          key("schedule", &Toy::schedule, "a sub-tree").type("schedule"),
      },
      [](const Node& n, const Toy& t) {
        if (t.height < t.width) n.fail("height", "at least width");
      });
  return s;
}

Toy parse(const std::string& yaml) {
  Toy t;
  toy_schema().parse_into(Node::load_string(yaml, "t.yaml").child("toy"), &t);
  return t;
}

std::string parse_error(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Schema, DefaultsComeFromTheStructAndComputedKeysFromEarlierOnes) {
  const auto t = parse("toy: {path: p, width: 5}");
  EXPECT_EQ(t.width, 5);
  EXPECT_EQ(t.height, 10);  // computed from the width given
  EXPECT_EQ(t.rate, 0.5);
  EXPECT_TRUE(t.on);
  EXPECT_EQ(t.seed, 7u);
  EXPECT_EQ(t.colour, Colour::kBlue);
  EXPECT_EQ(t.name, "toy");
  EXPECT_EQ(t.tags, std::vector<std::string>{"a"});
  EXPECT_FALSE(t.schedule.defined());
  const auto u = parse(
      "toy: {path: q, width: 3, height: 4, rate: 0.25, on: false, seed: 9, colour: greenish, name: n, tags: [x, y], "
      "layers: [0, 2], schedule: {kind: constant}}");
  EXPECT_EQ(u.height, 4);
  EXPECT_EQ(u.rate, 0.25);
  EXPECT_FALSE(u.on);
  EXPECT_EQ(u.seed, 9u);
  EXPECT_EQ(u.colour, Colour::kGreenish);
  EXPECT_EQ(u.tags, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(u.layers, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(u.schedule.get<std::string>("kind", ""), "constant");
}

TEST(Schema, ErrorsNameTheLineTheKeyTheValueAndWhatWasExpected) {
  EXPECT_EQ(parse_error("toy: {path: p, width: 65}"), "t.yaml:1: toy.width = 65: expected a value in [1, 64]");
  EXPECT_EQ(parse_error("toy: {path: p, width: wide}"), "t.yaml:1: toy.width = wide: expected an integer");
  EXPECT_EQ(parse_error("toy: {path: p, colour: green}"),
            "t.yaml:1: toy.colour = green: expected one of blue|greenish|red");
  EXPECT_EQ(parse_error("toy: {path: p, name: a/b}"), "t.yaml:1: toy.name = a/b: expected a name without '/'");
  EXPECT_EQ(parse_error("toy: {path: p, seed: -1}"),
            "t.yaml:1: toy.seed = -1: expected an integer in [0, 9223372036854775807]");
  EXPECT_EQ(parse_error("toy: {path: p, layers: [1.5]}"), "t.yaml:1: toy.layers = [1.5]: expected a list of integers");
  EXPECT_EQ(parse_error("toy: {width: 2}"), "t.yaml:1: toy: required key 'toy.path' is missing (a string)");
  EXPECT_EQ(parse_error("toy: {path: p, depth: 2}"),
            "t.yaml:1: toy.depth: unknown key 'depth'; expected one of: colour, height, layers, name, on, path, rate, "
            "schedule, seed, tags, width");
  // The section's own check, after every key.
  EXPECT_EQ(parse_error("toy: {path: p, width: 6, height: 5}"), "t.yaml:1: toy.height = 5: expected at least width");
}

TEST(Schema, ExtraKeysAreLeftToTheirOwnReaders) {
  Toy t;
  EXPECT_NO_THROW(
      toy_schema().parse_into(Node::load_string("toy: {path: p, kind: x}", "t.yaml").child("toy"), &t, {"kind"}));
}

TEST(Schema, WritingThenParsingGivesTheSameValues) {
  const auto t = parse("toy: {path: q, width: 3, colour: red, tags: [x], layers: [4], schedule: {kind: c}}");
  YAML::Node out(YAML::NodeType::Map);
  toy_schema().write(t, out);
  EXPECT_EQ(out["colour"].as<std::string>(), "red");
  EXPECT_EQ(out["height"].as<int64_t>(), 6);
  YAML::Node doc;
  doc["toy"] = out;
  const auto u = parse(to_yaml_string(doc));
  EXPECT_EQ(u.width, 3);
  EXPECT_EQ(u.height, 6);
  EXPECT_EQ(u.colour, Colour::kRed);
  EXPECT_EQ(u.path, "q");
  EXPECT_EQ(u.tags, std::vector<std::string>{"x"});
  EXPECT_EQ(u.layers, std::vector<int64_t>{4});
  EXPECT_EQ(u.schedule.get<std::string>("kind", ""), "c");
  EXPECT_EQ(u.seed, 7u);
}

TEST(Schema, ReferenceRowsCarryTypeDefaultRangeAndMeaning) {
  const auto rows = toy_schema().reference("toy.");
  ASSERT_EQ(rows.size(), 11u);
  auto row = [&](const std::string& k) {
    for (const auto& r : rows) {
      if (r.key == "toy." + k) return r;
    }
    ADD_FAILURE() << k;
    return KeyReference{};
  };
  EXPECT_EQ(row("width").type, "integer");
  EXPECT_EQ(row("width").fallback, "8");
  EXPECT_EQ(row("width").allowed, "[1, 64]");
  EXPECT_EQ(row("width").meaning, "the width");
  EXPECT_EQ(row("height").fallback, "2 * width");
  EXPECT_EQ(row("rate").type, "number");
  EXPECT_EQ(row("on").type, "true or false");
  EXPECT_EQ(row("on").fallback, "true");
  EXPECT_EQ(row("colour").type, "one of");
  EXPECT_EQ(row("colour").allowed, "blue|greenish|red");
  EXPECT_EQ(row("colour").fallback, "blue");
  EXPECT_EQ(row("path").fallback, "(required)");
  EXPECT_EQ(row("tags").type, "list of strings");
  EXPECT_EQ(row("tags").fallback, "[a]");
  EXPECT_EQ(row("layers").fallback, "[]");
  EXPECT_EQ(row("schedule").type, "schedule");
  EXPECT_EQ(row("schedule").fallback, "(none)");
}
