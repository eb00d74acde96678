#include "training/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::training {

MetricsWriter::MetricsWriter(const std::string& path, int64_t truncate_after_step, bool tensorboard) : path_(path) {
  if (path_.empty()) return;
  if (truncate_after_step >= 0 && std::filesystem::exists(path_)) {
    std::istringstream in(core::read_file(path_));
    std::string kept, line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;  // a line cut by a kill
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
        throw core::UserError(
            fmt::format("{}:{}: {}: expected a JSON object with an integer \"step\" (this file "
                        "is written by bitqat train; move the foreign line away)",
                        path_, line_no, line.substr(0, 80)));
      }
      if (j["step"].get<int64_t>() > truncate_after_step) continue;
      kept += line + "\n";
    }
    core::write_file_atomic(path_, kept);
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw core::UserError(fmt::format("{}: cannot open metrics file for writing", path_));
  if (tensorboard) {
    const auto dir = std::filesystem::path(path_).parent_path().string();
    events_ = std::make_unique<checkpoints::EventFileWriter>(dir.empty() ? "." : dir);
    if (truncate_after_step >= 0) events_->session_start(truncate_after_step + 1);
  }
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (path_.empty()) return;
  out_ << record.dump() << '\n';
  out_.flush();
  if (!out_) {
    // A full disk or a vanished file: stop rather than train on with the record lost.
    throw core::UserError(fmt::format("{}: cannot write the metrics line of step {}: {}", path_,
                                      record.value("step", nlohmann::json()).dump(), std::strerror(errno)));
  }
  if (!events_ || !record.contains("step") || !record["step"].is_number_integer()) return;
  checkpoints::Scalars values;
  for (const auto& [key, v] : record.items()) {
    if (key == "step" || key == "elapsed_s" || !v.is_number()) continue;  // a bool or null is no number
    // A NaN (a grad norm that was not computed) is null in the JSON line: no point in either file.
    if (!std::isfinite(v.get<double>())) continue;
    values.emplace_back(key, v.get<float>());
  }
  if (!values.empty()) events_->scalars(record["step"].get<int64_t>(), values);
}

ProgressBar::ProgressBar(int64_t total, bool enabled) : total_(total), enabled_(enabled) {}

std::string format_duration(double seconds) {
  const int64_t s = seconds > 0.0 ? static_cast<int64_t>(seconds) : 0;
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
  return fmt::format("{}d{:02}h", s / 86400, s % 86400 / 3600);
}

std::string progress_line(int64_t step, int64_t total, double loss, double seconds_left) {
  const int width = 30;
  const int filled = total > 0 ? static_cast<int>(width * std::min(step, total) / total) : width;
  std::string line = fmt::format("[{}{}] {}/{} loss {:.4f}", std::string(filled, '#'), std::string(width - filled, '.'),
                                 step, total, loss);
  if (seconds_left >= 0.0) line += " eta " + format_duration(seconds_left);
  return line;
}

void ProgressBar::update(int64_t step, double loss) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  double left = -1.0;
  if (first_step_ < 0) {
    first_step_ = step;
    first_time_ = now;
  } else if (step > first_step_) {
    const double per_step =
        std::chrono::duration<double>(now - first_time_).count() / static_cast<double>(step - first_step_);
    left = per_step * static_cast<double>(std::max<int64_t>(total_ - step, 0));
  }
  // Trailing spaces clear what a longer previous line left on the terminal.
  std::fprintf(stdout, "\r%s   ", progress_line(step, total_, loss, left).c_str());
  std::fflush(stdout);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  std::fprintf(stdout, "\n");
  std::fflush(stdout);
}

}  // namespace bitqat::training
