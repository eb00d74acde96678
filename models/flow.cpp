#include "models/flow.hpp"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "data/source.hpp"

namespace bitqat::models {
namespace {

// The top 53 bits of a hash as a double in [0, 1).
double unit(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

at::Tensor rows_cpu(const at::Tensor& rows) {
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong, "counter randomness: rows must be int64 [B], got ",
              rows.sizes(), " ", rows.scalar_type());
  return rows.cpu().contiguous();
}

// t as a [B, 1, ...] tensor that broadcasts over x.
at::Tensor per_sample(const at::Tensor& t, const at::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return t.to(x.scalar_type()).reshape(shape);
}

}  // namespace

at::Tensor flow_interpolate(const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& t) {
  const auto tb = per_sample(t, x1);
  return (1 - tb) * x0 + tb * x1;
}

at::Tensor flow_matching_loss(const VelocityFn& v, const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& t) {
  const auto pred = v(flow_interpolate(x0, x1, t), t.to(x1.scalar_type()));
  return (pred.to(x1.scalar_type()) - (x1 - x0)).square().mean();
}

bool parse_solver(const std::string& name, Solver* out) {
  if (name == "euler") {
    *out = Solver::kEuler;
  } else if (name == "heun") {
    *out = Solver::kHeun;
  } else {
    return false;
  }
  return true;
}

std::string to_string(Solver s) { return s == Solver::kEuler ? "euler" : "heun"; }

at::Tensor integrate_flow(const VelocityFn& v, const at::Tensor& x0, int64_t steps, Solver solver) {
  if (steps < 1) throw std::invalid_argument(fmt::format("integrate_flow: steps = {}, expected >= 1", steps));
  const double h = 1.0 / static_cast<double>(steps);
  const int64_t B = x0.size(0);
  auto time = [&](int64_t k) { return at::full({B}, static_cast<double>(k) * h, x0.options()); };
  auto x = x0;
  for (int64_t k = 0; k < steps; ++k) {
    const auto d1 = v(x, time(k));
    if (solver == Solver::kEuler) {
      x = x + h * d1;
    } else {
      const auto d2 = v(x + h * d1, time(k + 1));
      x = x + (h / 2) * (d1 + d2);
    }
  }
  return x;
}

at::Tensor guided_velocity(BitDiTImpl& model, const at::Tensor& x, const at::Tensor& t, const at::Tensor& labels,
                           double w) {
  const auto null = at::full_like(labels, model.config.null_class());
  const auto v = model.forward(at::cat({x, x}), at::cat({t, t}), at::cat({labels, null}));
  const auto vc = v.narrow(0, 0, x.size(0));
  const auto vu = v.narrow(0, x.size(0), x.size(0));
  return vu + w * (vc - vu);
}

at::Tensor counter_normal(uint64_t seed, const at::Tensor& rows, int64_t n) {
  const auto r = rows_cpu(rows);
  const int64_t B = r.size(0);
  auto out = at::empty({B, n}, at::kFloat);
  const auto* pr = r.data_ptr<int64_t>();
  auto* po = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const auto row = static_cast<uint64_t>(pr[b]);
      for (int64_t j = 0; j < n; ++j) {
        const auto k = static_cast<uint64_t>(j);
        const double u1 = 1.0 - unit(data::mix3(seed, row, 2 * k));  // (0, 1]: log is finite
        const double u2 = unit(data::mix3(seed, row, 2 * k + 1));
        po[b * n + j] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
      }
    }
  });
  return out;
}

at::Tensor counter_uniform(uint64_t seed, const at::Tensor& rows) {
  const auto r = rows_cpu(rows);
  auto out = at::empty({r.size(0)}, at::kDouble);
  const auto* pr = r.data_ptr<int64_t>();
  auto* po = out.data_ptr<double>();
  for (int64_t b = 0; b < r.size(0); ++b) po[b] = unit(data::mix3(seed, static_cast<uint64_t>(pr[b]), 0));
  return out;
}

at::Tensor sample_times(uint64_t seed, const at::Tensor& rows, TimeSampling kind, double mean, double std) {
  if (kind == TimeSampling::kUniform) return counter_uniform(seed, rows);
  return at::sigmoid(counter_normal(seed, rows, 1).reshape({-1}).to(at::kDouble) * std + mean);
}

at::Tensor drop_labels(const at::Tensor& labels, const at::Tensor& rows, uint64_t seed, double p, int64_t null_label) {
  const auto drop = counter_uniform(seed, rows).lt(p).to(labels.device());
  return at::where(drop, at::full_like(labels, null_label), labels);
}

at::Tensor sample_images(BitDiTImpl& model, const at::Tensor& labels, int64_t steps, double cfg, Solver solver,
                         uint64_t seed, int64_t chunk) {
  if (chunk < 1) throw std::invalid_argument(fmt::format("sample_images: chunk = {}, expected >= 1", chunk));
  at::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto& c = model.config;
  const auto ref = model.t_fc1->weight;
  const int64_t N = labels.size(0);
  std::vector<at::Tensor> parts;
  for (int64_t i = 0; i < N; i += chunk) {
    const int64_t m = std::min(chunk, N - i);
    const auto y = labels.narrow(0, i, m).to(ref.device());
    const auto x0 = counter_normal(seed, at::arange(i, i + m, at::kLong), c.channels * c.height * c.width)
                        .reshape({m, c.channels, c.height, c.width})
                        .to(ref.device(), ref.scalar_type());
    const VelocityFn v = [&](const at::Tensor& x, const at::Tensor& t) {
      return guided_velocity(model, x, t, y, cfg);
    };
    parts.push_back(integrate_flow(v, x0, steps, solver));
  }
  model.train(was_training);
  return at::cat(parts);
}

}  // namespace bitqat::models
