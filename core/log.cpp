#include "core/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <fmt/format.h>

namespace bitqat::core {

void init_logging(int rank, const std::string& level) {
  auto logger = spdlog::stderr_color_mt(fmt::format("bitqat.{}", rank));
  logger->set_pattern(fmt::format("[%H:%M:%S.%e] [rank {}] [%^%l%$] %v", rank));
  auto lvl = spdlog::level::from_str(level);
  if (rank != 0 && lvl < spdlog::level::warn) lvl = spdlog::level::warn;
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }

}  // namespace bitqat::core
