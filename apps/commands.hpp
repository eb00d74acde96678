// The subcommands of the bitqat binary, each taking its parsed options (apps/cli.hpp).
#pragma once
#include "apps/cli.hpp"

namespace bitqat::apps {

int cmd_version(const VersionArgs& a);
int cmd_train(const TrainArgs& args);
int cmd_eval(const EvalArgs& args);
int cmd_generate(const GenerateArgs& args);
int cmd_sample(const SampleArgs& args);
int cmd_quantize(const QuantizeArgs& args);
int cmd_export(const ExportArgs& args);
int cmd_config(const ConfigArgs& args);
int cmd_plan(const PlanArgs& args);

}  // namespace bitqat::apps
