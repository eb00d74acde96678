#include "training/metrics.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace bitqat::training {

MetricsWriter::MetricsWriter(const std::string& path, int64_t truncate_after_step) : path_(path) {
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
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (path_.empty()) return;
  out_ << record.dump() << '\n';
  out_.flush();
}

ProgressBar::ProgressBar(int64_t total, bool enabled) : total_(total), enabled_(enabled) {}

void ProgressBar::update(int64_t step, double loss) {
  if (!enabled_) return;
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
  std::fprintf(stdout, "\r[%s%s] %lld/%lld loss %.4f", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), static_cast<long long>(step), static_cast<long long>(total_),
               loss);
  std::fflush(stdout);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  std::fprintf(stdout, "\n");
  std::fflush(stdout);
}

}  // namespace bitqat::training
