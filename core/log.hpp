// Logging set-up: one spdlog pattern for every binary, tagged with the rank; info on rank 0 only.
#pragma once
#include <string>

namespace bitqat::core {

// Configure the default spdlog logger. Ranks other than 0 log warnings and errors only.
void init_logging(int rank = 0, const std::string& level = "info");

// True when stdout is a terminal (progress bars go there, never into a log file).
bool stdout_is_terminal();

}  // namespace bitqat::core
