// The house rules of docs/architecture.md, checked on the sources: includes go one way, down the
// floors (core, cuda <- bitlinear, data, schedules, checkpoints <- models <- interop <- training <-
// apps), bitlinear/ never includes its op layer bitlinear/ops/, rooms of one floor do not include each
// other, and no two files include each other (directly or through others).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// Floor of each folder (a sub-folder takes its own entry when listed, else its parent's).
const std::map<std::string, int> kFloors = {
    {"core", 0},          {"cuda", 0},   {"bitlinear", 1}, {"data", 1},     {"schedules", 1}, {"checkpoints", 1},
    {"bitlinear/ops", 2}, {"models", 3}, {"interop", 4},   {"training", 5}, {"apps", 6},
};

std::string room_of(const std::string& rel) {
  std::string best;
  for (const auto& [room, floor] : kFloors) {
    if (rel.rfind(room + "/", 0) == 0 && room.size() > best.size()) best = room;
  }
  return best;
}

struct Source {
  std::string rel;                    // path relative to the repository root
  std::vector<std::string> includes;  // project includes ("folder/file.hpp")
};

std::vector<Source> scan() {
  std::vector<Source> out;
  const fs::path root(BITQAT_SOURCE_DIR);
  const std::regex inc(R"re(^\s*#\s*include\s+"([^"]+)")re");
  for (const auto& [room, floor] : kFloors) {
    for (const auto& e : fs::recursive_directory_iterator(root / room)) {
      const auto ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".cpp" && ext != ".hpp" && ext != ".cu" && ext != ".cuh")) continue;
      const auto rel = fs::relative(e.path(), root).string();
      if (room_of(rel) != room) continue;                          // listed under its own sub-room
      if (rel.find("gloo_decls/") != std::string::npos) continue;  // stand-ins for a third-party library
      Source s{rel, {}};
      std::ifstream in(e.path());
      std::string line;
      std::smatch m;
      while (std::getline(in, line)) {
        if (std::regex_search(line, m, inc) && fs::exists(root / m[1].str())) s.includes.push_back(m[1].str());
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace

TEST(Layering, IncludesGoDownTheFloorsOnly) {
  const auto sources = scan();
  ASSERT_GT(sources.size(), 50u);
  std::vector<std::string> bad;
  for (const auto& s : sources) {
    const auto room = room_of(s.rel);
    for (const auto& inc : s.includes) {
      const auto target = room_of(inc);
      if (target.empty() || target == room) continue;
      const int from = kFloors.at(room), to = kFloors.at(target);
      if (to > from)
        bad.push_back(s.rel + " includes " + inc + " (floor " + std::to_string(to) + " above " + room + "'s " +
                      std::to_string(from) + ")");
      if (to == from) bad.push_back(s.rel + " includes " + inc + " (another room of the same floor)");
    }
  }
  EXPECT_TRUE(bad.empty()) << [&] {
    std::string all;
    for (const auto& b : bad) all += "\n  " + b;
    return all;
  }();
}

TEST(Layering, NoFileIncludesItselfThroughOthers) {
  std::map<std::string, std::vector<std::string>> graph;
  for (const auto& s : scan()) graph[s.rel] = s.includes;
  // A .cpp and its own header are one unit: include cycles are between headers (and a .cpp that a
  // header reaches back to is impossible), so a depth-first search over headers finds them all.
  std::map<std::string, int> state;  // 0 new, 1 on the stack, 2 done
  std::vector<std::string> stack, cycles;
  std::function<void(const std::string&)> visit = [&](const std::string& f) {
    state[f] = 1;
    stack.push_back(f);
    for (const auto& g : graph[f]) {
      if (state[g] == 1) {
        std::string c;
        for (auto it = std::find(stack.begin(), stack.end(), g); it != stack.end(); ++it) c += *it + " -> ";
        cycles.push_back(c + g);
      } else if (state[g] == 0) {
        visit(g);
      }
    }
    stack.pop_back();
    state[f] = 2;
  };
  for (const auto& [f, incs] : graph) {
    if (state[f] == 0) visit(f);
  }
  EXPECT_TRUE(cycles.empty()) << [&] {
    std::string all;
    for (const auto& c : cycles) all += "\n  " + c;
    return all;
  }();
}
