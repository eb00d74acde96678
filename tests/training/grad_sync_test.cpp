// GradSync: bucket planning, and real multi-process runs over Gloo on loopback. The test binary starts
// itself as the ranks (GradSyncWorker.Run, skipped unless BITQAT_GS_OUT is set); the parent compares
// their averaged gradients and parameters with a single-process full-batch computation.
#include "training/grad_sync.hpp"

#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/serialize.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "core/error.hpp"
#include "spawn.hpp"

namespace fs = std::filesystem;
using bitqat::training::DistContext;
using bitqat::training::DistEnv;
using bitqat::training::GradSync;

namespace {

constexpr int64_t kGlobal = 8;  // rows of a global batch
constexpr int kSteps = 5;

torch::nn::Sequential make_net(uint64_t seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::Tanh(), torch::nn::Linear(16, 16),
                               torch::nn::Tanh(), torch::nn::Linear(16, 3));
}

// The global batch of a step: a pure function of the step.
std::pair<at::Tensor, at::Tensor> global_batch(int step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
  return {at::randn({kGlobal, 6}, gen), at::randn({kGlobal, 3}, gen)};
}

// One step of rank `rank` of `world` with `accum` micro-steps: rows [(m*world + rank)*B, +B).
void local_backward(torch::nn::Sequential& net, GradSync* sync, int step, int rank, int world, int accum) {
  const auto [x, y] = global_batch(step);
  const int64_t b = kGlobal / (world * accum);
  if (sync) sync->prepare();
  for (int m = 0; m < accum; ++m) {
    const int64_t r0 = (static_cast<int64_t>(m) * world + rank) * b;
    if (sync) sync->set_sync(m == accum - 1);
    auto loss = torch::nn::functional::mse_loss(net->forward(x.narrow(0, r0, b)), y.narrow(0, r0, b));
    (loss / accum).backward();
  }
  if (sync) sync->finish();
}

void sgd(torch::nn::Sequential& net) {
  at::NoGradGuard g;
  for (auto& p : net->parameters()) {
    p.sub_(p.grad(), 0.1);
    p.mutable_grad().zero_();
  }
}

std::vector<at::Tensor> grads(torch::nn::Sequential& net) {
  std::vector<at::Tensor> out;
  for (auto& p : net->parameters()) out.push_back(p.grad().clone());
  return out;
}

std::vector<at::Tensor> params(torch::nn::Sequential& net) {
  std::vector<at::Tensor> out;
  for (auto& p : net->parameters()) out.push_back(p.detach().clone());
  return out;
}

std::string self_exe() { return fs::read_symlink("/proc/self/exe").string(); }

struct Runs {
  std::vector<int> codes;
  std::vector<std::string> logs;
};

Runs run_ranks(const fs::path& dir, int world, int accum, const std::string& bucket_bytes, bool overlap,
               const std::string& mode = "train") {
  const int port = bitqat::testing::free_port();
  std::vector<pid_t> pids;
  Runs r;
  for (int rank = 0; rank < world; ++rank) {
    const std::string log = (dir / ("rank" + std::to_string(rank) + ".log")).string();
    r.logs.push_back(log);
    pids.push_back(bitqat::testing::spawn({self_exe(), "--gtest_filter=GradSyncWorker.Run"},
                                          {{"BITQAT_GS_OUT", dir.string()},
                                           {"BITQAT_GS_ACCUM", std::to_string(accum)},
                                           {"BITQAT_GS_BUCKET", bucket_bytes},
                                           {"BITQAT_GS_OVERLAP", overlap ? "1" : "0"},
                                           {"BITQAT_GS_MODE", mode},
                                           {"RANK", std::to_string(rank)},
                                           {"WORLD_SIZE", std::to_string(world)},
                                           {"MASTER_ADDR", "127.0.0.1"},
                                           {"MASTER_PORT", std::to_string(port)}},
                                          log));
  }
  for (auto pid : pids) r.codes.push_back(bitqat::testing::wait_for(pid, 60));
  return r;
}

std::vector<at::Tensor> load(const fs::path& p) {
  std::vector<at::Tensor> v;
  torch::load(v, p.string());
  return v;
}

double max_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

}  // namespace

// One rank of the multi-process tests (started by them; skipped when run directly).
TEST(GradSyncWorker, Run) {
  const char* out = std::getenv("BITQAT_GS_OUT");
  if (!out) GTEST_SKIP() << "a rank of the multi-process tests, started by them";
  at::set_num_threads(1);
  const auto env = bitqat::training::dist_env_from_environment();
  const int accum = std::atoi(std::getenv("BITQAT_GS_ACCUM"));
  const std::string mode = std::getenv("BITQAT_GS_MODE");
  DistContext dist(env, "gloo", std::chrono::seconds(20));
  // Ranks start from different weights: the broadcast must make them rank 0's.
  auto net = make_net(1 + static_cast<uint64_t>(env.rank));
  // "unused": a trainable parameter that the loss never touches; finish() must name it. As the
  // Sequential's own parameter it comes before its children's, so it is the last bucket (reverse
  // order) and every other bucket is already on the wire when finish() finds it. "unused_idle" puts
  // it in a child registered last: the first bucket, so nothing has been launched.
  if (mode == "unused") net->register_parameter("extra", at::zeros({4}));
  auto holder = std::make_shared<torch::nn::Module>();
  holder->register_module("net", net.ptr());
  if (mode == "unused_idle")
    holder->register_module("tail", std::make_shared<torch::nn::Module>())->register_parameter("extra", at::zeros({4}));
  GradSync sync(dist, mode == "unused_idle" ? *holder : *net, std::atoll(std::getenv("BITQAT_GS_BUCKET")),
                std::string(std::getenv("BITQAT_GS_OVERLAP")) == "1");
  sync.broadcast_parameters();
  const std::string tag = "_rank" + std::to_string(env.rank) + ".pt";
  if (mode == "unused" || mode == "unused_idle") {
    sync.prepare();
    sync.set_sync(true);
    auto [x, y] = global_batch(0);
    torch::nn::functional::mse_loss(net->forward(x), y).backward();
    try {
      sync.finish();
      std::printf("finish() did not throw\n");
    } catch (const bitqat::core::UserError& e) {
      std::printf("UserError: %s\n", e.what());
    }
    std::printf("launched %zu of %zu buckets; group failed: %d\n", sync.launched_buckets(), sync.buckets().size(),
                dist.failed() ? 1 : 0);
    return;  // a normal exit: destructors and the process teardown run with the group still alive
  }
  if (mode == "buffers") {
    // Batch norm's running statistics come from each rank's own rows; prepare() makes them rank 0's.
    torch::nn::Sequential bn_net(torch::nn::Linear(6, 8), torch::nn::BatchNorm1d(8), torch::nn::Linear(8, 3));
    GradSync bn_sync(dist, *bn_net, 1 << 20, true);
    bn_sync.broadcast_parameters();
    for (int step = 0; step < 3; ++step) local_backward(bn_net, &bn_sync, step, env.rank, env.world_size, 1);
    bn_sync.broadcast_buffers();
    std::vector<at::Tensor> bufs;
    for (const auto& b : bn_net->buffers()) bufs.push_back(b.clone());
    torch::save(bufs, std::string(out) + "/buffers" + tag);
    return;
  }
  local_backward(net, &sync, 0, env.rank, env.world_size, accum);
  torch::save(grads(net), std::string(out) + "/grads" + tag);
  sgd(net);
  for (int step = 1; step < kSteps; ++step) {
    local_backward(net, &sync, step, env.rank, env.world_size, accum);
    sgd(net);
  }
  torch::save(params(net), std::string(out) + "/params" + tag);
}

TEST(GradSync, PlanBucketsReverseOrderWithCaps) {
  // 4-byte floats: 100, 200, 300 KiB and 2 MiB parameters, bucket cap 1.5 MiB.
  std::vector<at::Tensor> p{at::zeros({25600}), at::zeros({51200}), at::zeros({76800}), at::zeros({524288})};
  const auto b = bitqat::training::plan_buckets(p, 1536 * 1024);
  // The 2 MiB tensor alone (larger than any cap), then the first 1 MiB-capped bucket is full, then
  // the rest under 1.5 MiB.
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0], (std::vector<size_t>{3}));
  EXPECT_EQ(b[1], (std::vector<size_t>{2, 1, 0}));
  // A tiny cap: one parameter per bucket, last parameter first.
  const auto t = bitqat::training::plan_buckets(p, 16);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0], (std::vector<size_t>{3}));
  EXPECT_EQ(t[3], (std::vector<size_t>{0}));
  // dtype changes split buckets.
  std::vector<at::Tensor> q{at::zeros({4}), at::zeros({4}, at::kDouble), at::zeros({4})};
  EXPECT_EQ(bitqat::training::plan_buckets(q, 1 << 20).size(), 3u);
}

TEST(GradSync, WithoutProcessGroupDoesNothing) {
  DistContext dist(DistEnv{}, "auto", std::chrono::seconds(5));
  auto net = make_net(1);
  GradSync sync(dist, *net, 1 << 20, true);
  EXPECT_TRUE(sync.buckets().empty());
  local_backward(net, &sync, 0, 0, 1, 2);
  auto ref = make_net(1);
  local_backward(ref, nullptr, 0, 0, 1, 2);
  EXPECT_EQ(max_diff(grads(net), grads(ref)), 0.0);
}

// The core guarantee, over real processes: after one step the averaged gradients equal the
// single-process full-batch gradients (tolerance 1e-6: only the order of float sums differs), and
// after 5 SGD steps the ranks hold bit-identical parameters equal to the single-process ones.
class GradSyncTwoRanks : public ::testing::TestWithParam<std::tuple<int, const char*, bool>> {};

TEST_P(GradSyncTwoRanks, MatchesFullBatch) {
  const auto [accum, bucket, overlap] = GetParam();
  const auto dir = fs::temp_directory_path() / ("bitqat_gs_" + std::to_string(::getpid()) + "_" +
                                                std::to_string(accum) + bucket + (overlap ? "o" : "n"));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto r = run_ranks(dir, 2, accum, bucket, overlap);
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(r.codes[static_cast<size_t>(i)], 0) << bitqat::testing::slurp(r.logs[static_cast<size_t>(i)]);

  auto ref = make_net(1);
  local_backward(ref, nullptr, 0, 0, 1, 1);
  const auto g_ref = grads(ref);
  sgd(ref);
  for (int step = 1; step < kSteps; ++step) {
    local_backward(ref, nullptr, step, 0, 1, 1);
    sgd(ref);
  }
  const auto g0 = load(dir / "grads_rank0.pt");
  const auto g1 = load(dir / "grads_rank1.pt");
  EXPECT_EQ(max_diff(g0, g1), 0.0);
  EXPECT_LT(max_diff(g0, g_ref), 1e-6);
  const auto p0 = load(dir / "params_rank0.pt");
  const auto p1 = load(dir / "params_rank1.pt");
  EXPECT_EQ(max_diff(p0, p1), 0.0) << "ranks diverged";
  EXPECT_LT(max_diff(p0, params(ref)), 1e-5);
  fs::remove_all(dir);
}

// accumulation 1 and 2; one bucket, or a bucket per tensor (the 1 MiB first cap does not bite here);
// overlapped and not.
INSTANTIATE_TEST_SUITE_P(Variants, GradSyncTwoRanks,
                         ::testing::Values(std::make_tuple(1, "1048576", true), std::make_tuple(2, "64", true),
                                           std::make_tuple(1, "64", false)));

TEST(GradSync, UnusedParameterIsNamedNotHung) {
  const auto dir = fs::temp_directory_path() / ("bitqat_gs_unused_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_ranks(dir, 2, 1, "64", true, "unused");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int i = 0; i < 2; ++i) {
    const auto log = bitqat::testing::slurp(r.logs[static_cast<size_t>(i)]);
    EXPECT_EQ(r.codes[static_cast<size_t>(i)], 0) << log;
    EXPECT_NE(log.find("UserError: rank " + std::to_string(i) + ": trainable parameter(s) extra got no gradient"),
              std::string::npos)
        << log;
  }
  EXPECT_LT(s, 30.0);
  fs::remove_all(dir);
}

// The failure path must end in the rank's own message and exit code, never in an abort while the
// process shuts down (it once died with "terminate called ... std::system_error: Invalid argument",
// exit 134, after its error, under ctest -j 2). Repeated, with both ranks competing for the cores with
// busy threads, and with all-reduces still in flight when the error is found.
TEST(GradSync, FailurePathsExitCleanlyUnderLoad) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  for (int i = 0; i < 2; ++i) {
    hogs.emplace_back([&stop] {
      volatile double x = 0;
      while (!stop) x = x + 1.0;
    });
  }
  const auto dir = fs::temp_directory_path() / ("bitqat_gs_load_" + std::to_string(::getpid()));
  for (const char* mode : {"unused", "unused_idle"}) {
    for (int rep = 0; rep < 6; ++rep) {
      fs::remove_all(dir);
      fs::create_directories(dir);
      const auto r = run_ranks(dir, 2, 1, "64", true, mode);
      for (int i = 0; i < 2; ++i) {
        const auto log = bitqat::testing::slurp(r.logs[static_cast<size_t>(i)]);
        EXPECT_EQ(r.codes[static_cast<size_t>(i)], 0) << mode << " rep " << rep << " rank " << i << ":\n" << log;
        EXPECT_NE(log.find("got no gradient"), std::string::npos) << log;
        EXPECT_NE(log.find("group failed: 0"), std::string::npos) << log;
        EXPECT_EQ(log.find("terminate called"), std::string::npos) << log;
      }
      // 64-byte buckets in reverse order: "unused" has the 6 tensors of 3 linears in 6 buckets, all on
      // the wire, and the extra alone in the last; "unused_idle" has the extra (16 bytes) sharing the
      // first bucket with the last bias (12 bytes), so that bucket never completes and none starts.
      const char* want = std::string(mode) == "unused" ? "launched 6 of 7 buckets" : "launched 0 of 6 buckets";
      EXPECT_NE(bitqat::testing::slurp(r.logs[0]).find(want), std::string::npos) << bitqat::testing::slurp(r.logs[0]);
    }
  }
  stop = true;
  for (auto& t : hogs) t.join();
  fs::remove_all(dir);
}

TEST(GradSync, BuffersFollowRankZero) {
  const auto dir = fs::temp_directory_path() / ("bitqat_gs_buf_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto r = run_ranks(dir, 2, 1, "64", true, "buffers");
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(r.codes[static_cast<size_t>(i)], 0) << bitqat::testing::slurp(r.logs[static_cast<size_t>(i)]);
  }
  const auto b0 = load(dir / "buffers_rank0.pt");
  const auto b1 = load(dir / "buffers_rank1.pt");
  ASSERT_EQ(b0.size(), 3u);  // running mean, running var, batches seen
  EXPECT_EQ(max_diff(b0, b1), 0.0);
  EXPECT_GT(b0[0].abs().max().item<double>(), 0.0);  // the statistics did move
  fs::remove_all(dir);
}

// The hooks start the all-reduces during the backward pass (one rank, Gloo on loopback): with overlap
// every bucket is on the wire before finish(); without, none is; accumulation micro-steps start none.
TEST(GradSync, BucketsStartDuringBackward) {
  for (const bool overlap : {true, false}) {
    DistEnv env;
    env.launcher = "torchrun";
    env.master_addr = "127.0.0.1";
    env.master_port = bitqat::testing::free_port();
    DistContext dist(env, "gloo", std::chrono::seconds(10));
    auto net = make_net(1);
    GradSync sync(dist, *net, 64, overlap);  // 64 bytes: one bucket per tensor
    ASSERT_EQ(sync.buckets().size(), 6u);
    EXPECT_EQ(sync.buckets()[0].names, (std::vector<std::string>{"4.bias"}));  // last parameter first
    const auto [x, y] = global_batch(0);
    sync.prepare();
    sync.set_sync(false);
    torch::nn::functional::mse_loss(net->forward(x.narrow(0, 0, 4)), y.narrow(0, 0, 4)).backward();
    EXPECT_EQ(sync.launched_buckets(), 0u);
    sync.set_sync(true);
    torch::nn::functional::mse_loss(net->forward(x.narrow(0, 4, 4)), y.narrow(0, 4, 4)).backward();
    EXPECT_EQ(sync.launched_buckets(), overlap ? 6u : 0u) << "overlap " << overlap;
    sync.finish();
    EXPECT_EQ(sync.launched_buckets(), 6u);
    EXPECT_EQ(sync.synced_steps(), 1);
  }
}
