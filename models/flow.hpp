// Flow matching (rectified flow: Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2022,
// "Flow Matching for Generative Modeling") with classifier-free guidance (Ho & Salimans 2022): the
// conventions that training (training/task.cpp) and sampling share, the ODE solvers, and
// counter-based randomness that does not depend on how a batch is split over ranks, on the CPU's
// instruction set or on the device.
//
// Path: x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) the noise and x1 the data, t in [0, 1]; the
// network predicts the velocity dx_t/dt = x1 - x0. Sampling integrates dx/dt = v(x, t) from t = 0
// (noise) to t = 1 (an image). Images are in [-1, 1] on the model's side.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>

#include "models/dit.hpp"

namespace bitqat::models {

// v(x [B, ...], t [B]) -> [B, ...], both in x's dtype.
using VelocityFn = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& t)>;

// x_t for t [B] (broadcast over the other dims of x0 and x1, which have the same shape).
at::Tensor flow_interpolate(const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& t);

// The flow-matching loss: mean over every element of (v(x_t, t) - (x1 - x0))^2.
at::Tensor flow_matching_loss(const VelocityFn& v, const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& t);

enum class Solver { kEuler, kHeun };
// "euler" | "heun"; false for anything else (callers name the option).
bool parse_solver(const std::string& name, Solver* out);
std::string to_string(Solver s);

// Integrates dx/dt = v(x, t) from t = 0 to 1 in `steps` uniform steps of h = 1 / steps, starting at
// x0. Euler: x += h v(x, t) (first order, one evaluation per step). Heun (explicit trapezoid, second
// order, two evaluations): x' = x + h v(x, t); x += h/2 (v(x, t) + v(x', t + h)). Throws
// std::invalid_argument for steps < 1.
at::Tensor integrate_flow(const VelocityFn& v, const at::Tensor& x0, int64_t steps, Solver solver);

// Classifier-free guidance: v_u + w (v_c - v_u), with v_c = model(x, t, labels) and v_u =
// model(x, t, null label), computed in one batched pass of 2B samples. w = 0 is the unconditional
// velocity, w = 1 the conditional one, w > 1 pushes away from the unconditional one.
at::Tensor guided_velocity(BitDiTImpl& model, const at::Tensor& x, const at::Tensor& t, const at::Tensor& labels,
                           double w);

// Counter-based randomness: element j of the row with global id r comes from a 64-bit hash of
// (seed, r, j) (data::mix3), so a sample's randomness depends only on the seed and its id.
// rows: int64 [B] (any device; read on the CPU).
// Standard normals by Box-Muller: [B, n] float32 on the CPU.
at::Tensor counter_normal(uint64_t seed, const at::Tensor& rows, int64_t n);
// Uniform in [0, 1) with 53 random bits: [B] float64 on the CPU.
at::Tensor counter_uniform(uint64_t seed, const at::Tensor& rows);

// Training times of the flow-matching path for the rows (DiTConfig::time_sampling): uniform is
// counter_uniform(seed, rows); logit-normal is sigmoid(mean + std * counter_normal(seed, rows, 1)).
// [B] float64 on the CPU.
at::Tensor sample_times(uint64_t seed, const at::Tensor& rows, TimeSampling kind, double mean, double std);

// Label dropout for classifier-free guidance: each label becomes `null_label` where
// counter_uniform(seed, rows) < p. labels int64 [B] (returned on their device).
at::Tensor drop_labels(const at::Tensor& labels, const at::Tensor& rows, uint64_t seed, double p, int64_t null_label);

// Images of `labels` (int64 [N] in [0, num_classes)): noise counter_normal(seed, i) for sample i
// (so sample i does not depend on N), integrated with guidance weight `cfg`, in chunks of at most
// `chunk` samples. [N, C, H, W] in [-1, 1] (not clamped) in the model's dtype, on its device; no
// gradients; the model's train / eval mode is restored afterwards.
at::Tensor sample_images(BitDiTImpl& model, const at::Tensor& labels, int64_t steps, double cfg, Solver solver,
                         uint64_t seed, int64_t chunk = 256);

}  // namespace bitqat::models
