// The bitqat command line: train, eval, generate, sample, quantize, export, config, plan, version (apps/cli.hpp parses,
// apps/commands.hpp runs). User errors print one clear line and exit 2, internal failures exit 1.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "core/cpu_isa.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "training/distributed.hpp"

namespace {

// After an error, exit without running static destructors: a data-parallel run that failed may still
// have process-group threads blocked on a dead peer, and tearing them down could hang or crash.
// Everything that matters is already on disk (files are written atomically) or on stderr.
int fail_now(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  spdlog::shutdown();
  std::_Exit(code);
}

bool is_command(const std::string& s) {
  for (const char* c : {"train", "eval", "generate", "sample", "quantize", "export", "config", "plan", "version"}) {
    if (s == c) return true;
  }
  return false;
}

int run(const bitqat::apps::Command& c) {
  using namespace bitqat::apps;
  if (c.name == "version") return cmd_version(c.version);
  bitqat::core::init_logging(bitqat::training::rank_from_environment());
  if (c.name == "train") return cmd_train(c.train);
  if (c.name == "eval") return cmd_eval(c.eval);
  if (c.name == "generate") return cmd_generate(c.generate);
  if (c.name == "sample") return cmd_sample(c.sample);
  if (c.name == "quantize") return cmd_quantize(c.quantize);
  if (c.name == "config") return cmd_config(c.config);
  if (c.name == "plan") return cmd_plan(c.plan);
  return cmd_export(c.export_);
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything touches LibTorch: oneDNN's int8 kernels without AMX unless the user chose (core/cpu_isa.hpp).
  bitqat::core::default_onednn_max_cpu_isa();
  const std::string first = argc > 1 ? argv[1] : "";
  if (first.empty() || first == "--help" || first == "-h" || first == "help") {
    std::fputs(bitqat::apps::usage(), first.empty() ? stderr : stdout);
    return first.empty() ? 2 : 0;
  }
  if (first == "--version") return bitqat::apps::cmd_version({});
  if (!is_command(first)) {
    std::fprintf(stderr, "bitqat: unknown command '%s'\n\n%s", first.c_str(), bitqat::apps::usage());
    return 2;
  }
  try {
    const auto cmd = bitqat::apps::parse_command_line(argc, argv);
    if (cmd.name.empty()) return 0;  // help was printed
    return run(cmd);
  } catch (const bitqat::core::UserError& e) {
    std::fprintf(stderr, "bitqat %s: error: %s\n", first.c_str(), e.what());
    return fail_now(2);
  } catch (const std::filesystem::filesystem_error& e) {
    // A path that cannot be created, written or removed (an existing file where a directory goes, a
    // read-only or full disk): the message names the path and the reason.
    std::fprintf(stderr, "bitqat %s: error: %s\n", first.c_str(), e.what());
    return fail_now(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bitqat %s: internal error: %s\n", first.c_str(), e.what());
    return fail_now(1);
  }
}
