#include "training/distributed.hpp"

// c10d's Gloo and NCCL process groups are declared only when these are defined (Torch's CMake
// usually defines both). Gloo's own headers are not in the torch wheel: training/gloo_decls declares
// the few names the c10d header needs.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if BITQAT_HAVE_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <utility>

#include "core/error.hpp"

namespace bitqat::training {
namespace {

bool env_int(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (!v) return false;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || x < 0 || x > 1 << 20) {
    throw core::UserError(fmt::format("environment variable {} = '{}' is not a non-negative integer", name, v));
  }
  *out = static_cast<int>(x);
  return true;
}

}  // namespace

int rank_from_environment() {
  int rank = 0;
  for (const char* var : {"RANK", "SLURM_PROCID"}) {
    if (env_int(var, &rank)) return rank;
  }
  return 0;
}

namespace {

// The first line of an exception's text, without c10's backtrace.
std::string reason(const std::exception& e) {
  std::string s;
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    s = c->what_without_backtrace();
  } else {
    s = e.what();
  }
  const auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

bool is_loopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

double seconds(std::chrono::milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; }

int64_t nbytes(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // Up to the first top-level comma; a bracket range keeps its first entry.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    first.push_back(c);
  }
  const auto lb = first.find('[');
  if (lb == std::string::npos) return first;
  const std::string prefix = first.substr(0, lb);
  std::string inner = first.substr(lb + 1, first.find(']') - lb - 1);
  inner = inner.substr(0, inner.find_first_of(",-"));
  return prefix + inner;
}

DistEnv dist_env_from_environment() {
  DistEnv e;
  if (std::getenv("RANK") || std::getenv("WORLD_SIZE")) {
    e.launcher = "torchrun";
    if (!env_int("RANK", &e.rank) || !env_int("WORLD_SIZE", &e.world_size)) {
      throw core::UserError("torchrun launch: both RANK and WORLD_SIZE must be set");
    }
    env_int("LOCAL_RANK", &e.local_rank);
    e.local_world_size = e.world_size;
    env_int("LOCAL_WORLD_SIZE", &e.local_world_size);
    if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
    env_int("MASTER_PORT", &e.master_port);
    const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    e.use_agent_store = agent && std::string(agent) == "True";
    env_int("TORCHELASTIC_RESTART_COUNT", &e.restart_count);
  } else if (std::getenv("SLURM_PROCID") && std::getenv("SLURM_NTASKS")) {
    e.launcher = "slurm";
    env_int("SLURM_PROCID", &e.rank);
    env_int("SLURM_NTASKS", &e.world_size);
    env_int("SLURM_LOCALID", &e.local_rank);
    int per_node = 0;
    if (env_int("SLURM_NTASKS_PER_NODE", &per_node)) e.local_world_size = per_node;
    if (const char* nl = std::getenv("SLURM_JOB_NODELIST")) e.master_addr = first_slurm_host(nl);
    if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
    e.master_port = 29500;
    env_int("MASTER_PORT", &e.master_port);
  }
  if (e.world_size < 1 || e.rank >= e.world_size) {
    throw core::UserError(
        fmt::format("rank {} is not below the world size {} ({} launch)", e.rank, e.world_size, e.launcher));
  }
  if (e.launcher != "none") {
    if (e.master_addr.empty()) {
      throw core::UserError(fmt::format("{} launch: MASTER_ADDR is not set (the host of rank 0{})", e.launcher,
                                        e.launcher == "slurm" ? ", or SLURM_JOB_NODELIST" : ""));
    }
    if (e.master_port < 1 || e.master_port > 65535) {
      throw core::UserError(
          fmt::format("{} launch: MASTER_PORT = {} is not a TCP port (1..65535)", e.launcher, e.master_port));
    }
  }
  return e;
}

std::string resolve_backend(const std::string& backend, const at::Device& device) {
  if (backend == "auto") return device.is_cuda() ? "nccl" : "gloo";
  if (backend == "nccl" && !device.is_cuda()) {
    throw core::UserError(
        "dist.backend = nccl needs CUDA devices, but this run is on the CPU; use dist.backend: gloo (or auto)");
  }
  if (backend != "nccl" && backend != "gloo") {
    throw core::UserError(fmt::format("dist.backend = {}: expected auto, nccl or gloo", backend));
  }
  return backend;
}

CollectiveBytes& CollectiveBytes::operator+=(const CollectiveBytes& o) {
  for (auto [a, b] : {std::pair{&all_reduce, &o.all_reduce}, std::pair{&reduce_scatter, &o.reduce_scatter},
                      std::pair{&all_gather, &o.all_gather}, std::pair{&broadcast, &o.broadcast}}) {
    a->calls += b->calls;
    a->bytes += b->bytes;
  }
  return *this;
}

CollectiveBytes CollectiveBytes::operator-(const CollectiveBytes& o) const {
  CollectiveBytes d = *this;
  for (auto [a, b] : {std::pair{&d.all_reduce, &o.all_reduce}, std::pair{&d.reduce_scatter, &o.reduce_scatter},
                      std::pair{&d.all_gather, &o.all_gather}, std::pair{&d.broadcast, &o.broadcast}}) {
    a->calls -= b->calls;
    a->bytes -= b->bytes;
  }
  return d;
}

std::string describe_collectives(const CollectiveBytes& c, int64_t per) {
  const auto part = [per](const char* name, const CollectiveCount& k) {
    const auto mean = [per](int64_t v) {
      return v % per == 0 ? fmt::format("{}", v / per) : fmt::format("{:.2f}", static_cast<double>(v) / per);
    };
    return k.calls == 0 ? fmt::format("{} 0", name)
                        : fmt::format("{} {} bytes (calls: {})", name, mean(k.bytes), mean(k.calls));
  };
  return fmt::format("{}, {}, {}, {}", part("all-reduce", c.all_reduce), part("reduce-scatter", c.reduce_scatter),
                     part("all-gather", c.all_gather), part("broadcast", c.broadcast));
}

CollectiveBytes DistContext::collectives() const {
  CollectiveBytes c;
  CollectiveCount* out[] = {&c.all_reduce, &c.reduce_scatter, &c.all_gather, &c.broadcast};
  for (int k = 0; k < 4; ++k) {
    out[k]->calls = counters_[k].calls.load(std::memory_order_relaxed);
    out[k]->bytes = counters_[k].bytes.load(std::memory_order_relaxed);
  }
  return c;
}

PendingOp::PendingOp() = default;
PendingOp::PendingOp(PendingOp&&) noexcept = default;
PendingOp& PendingOp::operator=(PendingOp&&) noexcept = default;
PendingOp::~PendingOp() = default;

void PendingOp::wait() {
  if (!ctx_) return;
  DistContext* ctx = ctx_;
  ctx_ = nullptr;
  auto work = std::move(work_);
  ctx->wait_work(work, what_);
}

DistContext::DistContext(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout,
                         const at::Device& device)
    : env_(env), timeout_(timeout), device_(device) {
  if (env_.launcher == "none") return;  // one process, no group
  // Gloo writes to its peers with writev(), which cannot pass MSG_NOSIGNAL: a write to a rank that has
  // just died raises SIGPIPE, whose default action ends this process with status 141 and no message
  // instead of the failed collective's error (Python, which most c10d users run under, ignores
  // SIGPIPE from its start). Ignored, the write fails with EPIPE and Gloo reports the broken pair.
  std::signal(SIGPIPE, SIG_IGN);
  backend_ = resolve_backend(backend, device);
  if (backend_ == "gloo" && device_.is_cuda()) device_ = at::Device(at::kCPU);  // Gloo reduces host tensors
  const std::string where = fmt::format("{}:{}", env_.master_addr, env_.master_port);

  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(env_.master_port);
    // Under torchrun's agent store every rank is a client; otherwise rank 0 hosts the store.
    o.isServer = !env_.use_agent_store && env_.rank == 0;
    // Every rank counts itself in, and rank 0 waits until all have (clients without numWorkers are
    // not counted).
    if (!env_.use_agent_store) o.numWorkers = static_cast<std::size_t>(env_.world_size);
    o.waitWorkers = !env_.use_agent_store;
    o.timeout = timeout_;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, o);
    store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("bitqat/attempt_{}/", env_.restart_count), tcp);
  } catch (const std::exception& e) {
    throw core::UserError(fmt::format(
        "rank {}: rendezvous at {} ({} launch, world size {}) failed within dist.timeout_s = {} s: {} (are all "
        "ranks started with the same MASTER_ADDR/MASTER_PORT, and is the port free on rank 0's host?)",
        env_.rank, where, env_.launcher, env_.world_size, seconds(timeout_), reason(e)));
  }

  try {
    if (backend_ == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout_);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (is_loopback(env_.master_addr)) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      opts->threads = 2;
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env_.rank, env_.world_size, opts);
    } else {
#if BITQAT_HAVE_NCCL
      const int gpus = static_cast<int>(c10::cuda::device_count());
      if (env_.local_world_size > gpus) {
        throw core::UserError(fmt::format(
            "rank {}: {} ranks on this node but {} GPU(s) visible; NCCL needs one GPU per rank (start at most {} "
            "processes per node, or use dist.backend: gloo)",
            env_.rank, env_.local_world_size, gpus, gpus));
      }
      c10::cuda::set_device(device_.index());
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout_;
      pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env_.rank, env_.world_size, opts);
#else
      throw core::UserError(
          "dist.backend = nccl: this build found no nccl.h, so it has no NCCL process group; rebuild with the "
          "CUDA toolkit's NCCL headers, or use dist.backend: gloo");
#endif
    }
  } catch (const core::UserError&) {
    throw;
  } catch (const std::exception& e) {
    throw core::UserError(fmt::format("rank {}: creating the {} process group of {} ranks via {} failed: {}", env_.rank,
                                      backend_, env_.world_size, where, reason(e)));
  }
  if (is_main()) {
    spdlog::info("process group: {} over {} ranks ({} launch, rendezvous {}{}, timeout {} s)", backend_,
                 env_.world_size, env_.launcher, where, env_.use_agent_store ? " via the agent's store" : "",
                 seconds(timeout_));
  }
}

DistContext::~DistContext() {
  if (!pg_) return;
  if (failed_ || std::uncaught_exceptions() > 0) {
    // A peer may be gone: tearing the group down could wait on its collectives. The process is about
    // to exit with an error, and the operating system closes the sockets.
    (void)pg_.release();
    return;
  }
  try {
    pg_->shutdown();
  } catch (const std::exception& e) {
    spdlog::warn("process group shutdown: {}", reason(e));
  }
  pg_.reset();
}

void DistContext::wait_work(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  try {
    work->wait(timeout_);
  } catch (const std::exception& e) {
    failed_ = true;
    throw core::UserError(fmt::format(
        "rank {}: {} failed ({} over {} ranks, dist.timeout_s = {} s): {}; another rank has probably died or hung, "
        "see its log",
        env_.rank, what, backend_, env_.world_size, seconds(timeout_), reason(e)));
  }
}

PendingOp DistContext::start(Kind kind, int64_t bytes, std::string what,
                             const std::function<c10::intrusive_ptr<c10d::Work>()>& launch) {
  PendingOp op;
  try {
    op.work_ = launch();
  } catch (const std::exception& e) {
    failed_ = true;
    throw core::UserError(fmt::format("rank {}: starting {} failed: {}", env_.rank, what, reason(e)));
  }
  auto& c = counters_[static_cast<int>(kind)];
  c.calls.fetch_add(1, std::memory_order_relaxed);
  c.bytes.fetch_add(bytes, std::memory_order_relaxed);
  op.ctx_ = this;
  op.what_ = std::move(what);
  return op;
}

PendingOp DistContext::all_reduce_sum_async(at::Tensor& t, std::string what) {
  if (!pg_) return PendingOp();
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = timeout_;
  std::vector<at::Tensor> v{t};
  return start(Kind::kAllReduce, nbytes(t), std::move(what), [&] { return pg_->allreduce(v, o); });
}

PendingOp DistContext::reduce_scatter_sum_async(at::Tensor& out, at::Tensor& in, std::string what) {
  if (!pg_) {
    out.copy_(in.narrow(0, 0, out.numel()));
    return PendingOp();
  }
  c10d::ReduceScatterOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = timeout_;
  return start(Kind::kReduceScatter, nbytes(in), std::move(what),
               [&] { return pg_->_reduce_scatter_base(out, in, o); });
}

PendingOp DistContext::all_gather_async(at::Tensor& out, at::Tensor& in, std::string what) {
  if (!pg_) {
    out.narrow(0, 0, in.numel()).copy_(in);
    return PendingOp();
  }
  c10d::AllgatherOptions o;
  o.timeout = timeout_;
  return start(Kind::kAllGather, nbytes(out), std::move(what), [&] { return pg_->_allgather_base(out, in, o); });
}

void DistContext::all_reduce_sum_(at::Tensor& t, const std::string& what) {
  if (!pg_) return;
  at::Tensor buf = t.detach().to(device_).contiguous();
  all_reduce_sum_async(buf, what).wait();
  if (!buf.is_same(t)) t.detach().copy_(buf);
}

void DistContext::all_reduce_mean_(at::Tensor& t, const std::string& what) {
  if (!pg_) return;
  at::Tensor buf = t.detach().to(device_).contiguous();
  all_reduce_sum_async(buf, what).wait();
  buf.div_(env_.world_size);
  if (!buf.is_same(t)) t.detach().copy_(buf);
}

void DistContext::broadcast_(at::Tensor& t, const std::string& what) {
  if (!pg_) return;
  at::Tensor buf = t.detach().to(device_).contiguous();
  c10d::BroadcastOptions o;
  o.rootRank = 0;
  o.timeout = timeout_;
  std::vector<at::Tensor> v{buf};
  start(Kind::kBroadcast, nbytes(buf), what, [&] { return pg_->broadcast(v, o); }).wait();
  if (!buf.is_same(t.detach())) t.detach().copy_(buf);
}

void DistContext::barrier(const std::string& what) {
  if (!pg_) return;
  at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(device_));
  auto op = all_reduce_sum_async(one, what);
  op.wait();
}

void run_on_main(DistContext& dist, const std::function<void()>& fn, const std::string& what) {
  if (!dist.active()) return fn();
  std::exception_ptr error;
  if (dist.is_main()) {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  }
  at::Tensor failed = at::full({1}, error ? 1.0 : 0.0, at::kFloat);
  dist.all_reduce_mean_(failed, "agreement on " + what);
  if (error) std::rethrow_exception(error);
  if (failed.item<float>() > 0.0f) {
    throw core::UserError(fmt::format("rank {}: rank 0 failed at {} (its log says why)", dist.rank(), what));
  }
}

void DistContext::check_same(const std::vector<int64_t>& values, const std::vector<std::string>& names) {
  if (!pg_ || values.empty()) return;
  const auto n = static_cast<int64_t>(values.size());
  at::Tensor t = at::empty({2 * n}, at::kLong);
  auto* pt = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    pt[i] = values[static_cast<size_t>(i)];
    pt[n + i] = -values[static_cast<size_t>(i)];
  }
  at::Tensor buf = t.to(device_);
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  o.timeout = timeout_;
  std::vector<at::Tensor> v{buf};
  start(Kind::kAllReduce, nbytes(buf), "cross-rank agreement check", [&] { return pg_->allreduce(v, o); }).wait();
  const at::Tensor r = buf.cpu().contiguous();
  const auto* pr = r.data_ptr<int64_t>();
  std::string bad;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t hi = pr[i];
    const int64_t lo = -pr[n + i];
    if (hi != lo) {
      bad += fmt::format("{}{} (this rank {}, range over ranks [{}, {}])", bad.empty() ? "" : "; ",
                         names[static_cast<size_t>(i)], values[static_cast<size_t>(i)], lo, hi);
    }
  }
  if (!bad.empty()) {
    failed_ = true;
    throw core::UserError(
        fmt::format("rank {}: the ranks disagree on {}; data-parallel replicas have diverged", env_.rank, bad));
  }
}

int64_t bit_fingerprint(const std::vector<at::Tensor>& tensors) {
  uint64_t fp = 0;
  uint64_t i = 0;
  for (const auto& t0 : tensors) {
    ++i;
    if (!t0.defined() || t0.numel() == 0) continue;
    const at::Tensor t = t0.detach().contiguous().view({-1});
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    // Integer sums of the bit patterns: exact, so the order of the reduction does not matter.
    const at::Tensor words = bytes % 4 == 0 ? t.view(at::kInt) : t.view(at::kByte);
    const at::Tensor pos = at::arange(words.numel(), words.options().dtype(at::kLong)).remainder_(65521).add_(1);
    const auto s = static_cast<uint64_t>(words.to(at::kLong).sum().item<int64_t>());
    const auto w = static_cast<uint64_t>(words.to(at::kLong).mul(pos).sum().item<int64_t>());
    fp += i * 0x9E3779B97F4A7C15ull * s + (i + 1) * w;
  }
  return static_cast<int64_t>(fp);
}

}  // namespace bitqat::training
