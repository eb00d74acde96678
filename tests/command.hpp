// Test helper: run a shell command and capture its combined stdout and stderr with its exit status,
// for tests that drive the bitqat binary or cross-check our files with other programs' readers.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace bitqat::testing {

struct CommandResult {
  int code;         // exit status; -1 when the command could not start or was killed by a signal
  std::string out;  // stdout and stderr
};

inline CommandResult run_command(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed: " + cmd};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace bitqat::testing
