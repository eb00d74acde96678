// The formats of `bitqat export`, one registration each: the command line's --format choices and
// help, which format options apply, and what the command writes all come from this table. A new
// format is one row in exports.cpp (with its writer in interop/).
#pragma once
#include <string>
#include <vector>

#include "apps/cli.hpp"
#include "training/run_loader.hpp"

namespace bitqat::apps {

struct ExportFormat {
  const char* name;     // the --format value
  const char* summary;  // a few words for the usage text: "2-bit packed (eval/generate load it)"
  // The format's paragraph of `bitqat export --help`, one line (the help wraps it).
  std::string (*help)();
  bool gguf_options;  // --gguf-type, --gguf-float, --gguf-force-relu2 and --name apply
  // Writes args.out from the run's model at lambda 1 (refusing an existing path) and returns the
  // line printed on success. Throws core::UserError for a model the format cannot hold.
  std::string (*write)(training::LoadedRun& run, const ExportArgs& args);
};

// The formats in the order the help lists them.
const std::vector<ExportFormat>& export_formats();
// The format named `name`; nullptr for none.
const ExportFormat* find_export_format(const std::string& name);

}  // namespace bitqat::apps
