// The bitqat command line: train, eval, generate, quantize, export, version. Each subcommand parses its
// own flags; user errors print one clear line and exit 2, internal failures exit 1.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "apps/commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace {

const char* kUsage =
    "bitqat: ternary / binary quantization-aware training\n"
    "\n"
    "usage: bitqat <command> [options]\n"
    "\n"
    "commands:\n"
    "  train [CONFIG.yaml] [--set key.path=value ...] [--resume]\n"
    "                       train a model (no CONFIG: the built-in quickstart)\n"
    "  eval RUN_DIR [--json]\n"
    "                       validation loss (and bits per byte or accuracy) of a run's newest checkpoint\n"
    "  generate RUN_DIR --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "                       sample text from a byte-level language model run\n"
    "  quantize SRC_RUN_DIR --out OUT_RUN_DIR [--set key.path=value ...] [--json]\n"
    "                       data-free ternarization of a full-precision run, with its validation loss\n"
    "                       sample text from a byte-level language model run (or a packed export)\n"
    "  export RUN_DIR --format packed|hf-bitnet|gguf --out PATH [--gguf-type tq2_0|tq1_0]\n"
    "                       export the ternary model: 2-bit packed (eval/generate load it), Hugging Face\n"
    "                       BitNetForCausalLM, or a llama.cpp GGUF file\n"
    "  version              print the version\n"
    "\n"
    "`bitqat <command> --help` describes a command.\n";

// After an error, exit without running static destructors: a data-parallel run that failed may still
// have process-group threads blocked on a dead peer, and tearing them down could hang or crash.
// Everything that matters is already on disk (files are written atomically) or on stderr.
int fail_now(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  spdlog::shutdown();
  std::_Exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  try {
    if (cmd == "version" || cmd == "--version") return bitqat::apps::cmd_version(args);
    bitqat::core::init_logging(bitqat::apps::rank_from_environment());
    if (cmd == "train") return bitqat::apps::cmd_train(args);
    if (cmd == "eval") return bitqat::apps::cmd_eval(args);
    if (cmd == "generate") return bitqat::apps::cmd_generate(args);
    if (cmd == "quantize") return bitqat::apps::cmd_quantize(args);
    if (cmd == "export") return bitqat::apps::cmd_export(args);
    std::fprintf(stderr, "bitqat: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const bitqat::core::UserError& e) {
    std::fprintf(stderr, "bitqat %s: error: %s\n", cmd.c_str(), e.what());
    return fail_now(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bitqat %s: internal error: %s\n", cmd.c_str(), e.what());
    return fail_now(1);
  }
}
