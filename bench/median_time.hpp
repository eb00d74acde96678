// Timing for the bench programs: the median wall time of a call, in milliseconds, over `iters`
// calls after `warmup` untimed ones (std::chrono::steady_clock).
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace bitqat::bench {

inline double median_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace bitqat::bench
