// The subcommands of the bitqat binary; each takes the arguments after its name.
#pragma once
#include <string>
#include <vector>

namespace bitqat::apps {

int cmd_version(const std::vector<std::string>& args);
int cmd_train(const std::vector<std::string>& args);
int cmd_eval(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_quantize(const std::vector<std::string>& args);
int cmd_export(const std::vector<std::string>& args);

// RANK (torchrun) or SLURM_PROCID, else 0: only for the log tag before the process group exists.
int rank_from_environment();

}  // namespace bitqat::apps
