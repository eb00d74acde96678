// What a run reports: one log line per logged step, a JSON line per step and per evaluation in
// RUN_DIR/metrics.jsonl (appended, flushed each line), and a progress bar on a terminal.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>

namespace bitqat::training {

class MetricsWriter {
 public:
  // Empty path: no file (ranks other than 0). `truncate_after_step` >= 0 drops lines of later steps
  // left by a run that died after its last checkpoint, so a resumed file reads like one run.
  MetricsWriter(const std::string& path, int64_t truncate_after_step = -1);
  void write(const nlohmann::json& record);

 private:
  std::string path_;
  std::ofstream out_;
};

// A one-line progress bar on stdout when it is a terminal (never in a log file).
class ProgressBar {
 public:
  ProgressBar(int64_t total, bool enabled);
  void update(int64_t step, double loss);
  void finish();

 private:
  int64_t total_;
  bool enabled_;
};

}  // namespace bitqat::training
