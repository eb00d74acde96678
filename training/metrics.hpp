// What a run reports: one log line per logged step, a JSON line per step and per evaluation in
// RUN_DIR/metrics.jsonl (appended, flushed each line), with log.tensorboard the same numbers as
// TensorBoard scalars in event files beside it, and a progress bar on a terminal.
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include "checkpoints/tensorboard.hpp"

namespace bitqat::training {

class MetricsWriter {
 public:
  // Empty path: no file (ranks other than 0). `truncate_after_step` >= 0 drops lines of later steps
  // left by a run that died after its last checkpoint, so a resumed file reads like one run.
  // `tensorboard`: also a new TensorBoard event file in the file's directory (one per process), which
  // starts with a SessionLog START at step truncate_after_step + 1 so that TensorBoard drops what
  // earlier event files hold from that step on, as the truncation does for the JSON lines.
  MetricsWriter(const std::string& path, int64_t truncate_after_step = -1, bool tensorboard = false);
  // One JSON line; with tensorboard, the record's numbers (but "step" and "elapsed_s", which TensorBoard
  // shows as its axes) as scalars at its "step", tagged with their keys.
  void write(const nlohmann::json& record);
  // The event file, "" when there is none.
  std::string event_file() const { return events_ ? events_->path() : ""; }

 private:
  std::string path_;
  std::ofstream out_;
  std::unique_ptr<checkpoints::EventFileWriter> events_;
};

// A duration for people: "42s", "3m05s", "2h07m", "3d04h" (rounded down; negative counts as 0).
std::string format_duration(double seconds);

// The progress bar's text: a 30-character bar of step / total, the step, the loss and, when known,
// the time left ("eta 3m05s").
std::string progress_line(int64_t step, int64_t total, double loss, double seconds_left = -1.0);

// A one-line progress bar on stdout when it is a terminal (never in a log file). The time left is
// the mean time per step since the first update (the first step of this process, so a resumed run
// and the first step's warm-up do not skew it) times the steps left.
class ProgressBar {
 public:
  ProgressBar(int64_t total, bool enabled);
  void update(int64_t step, double loss);
  void finish();

 private:
  int64_t total_;
  bool enabled_;
  int64_t first_step_ = -1;
  std::chrono::steady_clock::time_point first_time_;
};

}  // namespace bitqat::training
