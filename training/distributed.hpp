// The process group of a run: where this process sits (from torchrun or SLURM variables) and the
// collectives the trainer needs, on PyTorch's c10d (TCPStore rendezvous; NCCL on GPUs, Gloo on the
// CPU). A process started without launcher variables has no process group: every collective is then
// the identity.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Backend;
class Work;
}  // namespace c10d

namespace bitqat::training {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;
  int master_port = 0;
  bool use_agent_store = false;
  int restart_count = 0;          // TORCHELASTIC_RESTART_COUNT: keeps store keys of restarts apart
  std::string launcher = "none";  // none | torchrun | slurm
};

// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), else SLURM's (SLURM_PROCID, ...), else a
// single process. Bad values are UserErrors naming the variable.
DistEnv dist_env_from_environment();
// This process's rank from RANK (torchrun) or SLURM_PROCID (SLURM), 0 when neither is set: for
// choosing which process logs, before a DistContext exists. Throws UserError naming the variable
// when it is not a non-negative integer.
int rank_from_environment();

// First host of a SLURM node list: "node[003-005,007],gpu1" -> "node003".
std::string first_slurm_host(const std::string& nodelist);

// The backend a config asks for on a device: "auto" is NCCL on CUDA and Gloo on the CPU. NCCL on
// the CPU is a UserError.
std::string resolve_backend(const std::string& backend, const at::Device& device);

// What a process's collectives were given, per kind: calls, and bytes of the buffer each call names
// (docs/distributed.md, "Bytes on the wire"): an all-reduce or a broadcast counts its tensor, a
// reduce-scatter its input [world * n], an all-gather its output [world * n]. A barrier is an
// all-reduce of one float.
struct CollectiveCount {
  int64_t calls = 0;
  int64_t bytes = 0;
};
struct CollectiveBytes {
  CollectiveCount all_reduce, reduce_scatter, all_gather, broadcast;
  int64_t bytes() const { return all_reduce.bytes + reduce_scatter.bytes + all_gather.bytes + broadcast.bytes; }
  CollectiveBytes& operator+=(const CollectiveBytes& o);
  CollectiveBytes operator-(const CollectiveBytes& o) const;
};
// "all-reduce 4194328 bytes (calls: 3), reduce-scatter 0, all-gather 0, broadcast 0", each divided by
// `per` (a mean per step; two decimals where it does not divide).
std::string describe_collectives(const CollectiveBytes& c, int64_t per = 1);

// A collective in flight; wait() throws a UserError naming what failed (peer gone, timeout).
class DistContext;
class PendingOp {
 public:
  PendingOp();
  PendingOp(PendingOp&&) noexcept;
  PendingOp& operator=(PendingOp&&) noexcept;
  ~PendingOp();
  void wait();
  bool valid() const { return ctx_ != nullptr; }

 private:
  friend class DistContext;
  DistContext* ctx_ = nullptr;
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;
};

class DistContext {
 public:
  // Joins the process group when a launcher set the environment (any world size, so that a
  // one-rank launch exercises the same path), on `device` (CUDA: NCCL or Gloo; CPU: Gloo).
  // Collectives and the rendezvous fail after `timeout` with a UserError naming the failure.
  DistContext(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout,
              const at::Device& device = at::Device(at::kCPU));
  ~DistContext();
  DistContext(const DistContext&) = delete;
  DistContext& operator=(const DistContext&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  // True when a process group exists (a launched run, even of one rank).
  bool active() const { return static_cast<bool>(pg_); }
  const std::string& backend() const { return backend_; }
  const DistEnv& env() const { return env_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  void barrier(const std::string& what = "barrier");
  // t (any device, any float dtype) <- mean over ranks.
  void all_reduce_mean_(at::Tensor& t, const std::string& what = "all-reduce");
  // t <- rank 0's t (in place, on t's device; CPU tensors travel through the group's device).
  void broadcast_(at::Tensor& t, const std::string& what = "broadcast");
  // Starts a sum all-reduce of t (on the group's device, contiguous) in place.
  PendingOp all_reduce_sum_async(at::Tensor& t, std::string what);
  // Starts a sum reduce-scatter: `in` is [world * n] (rank r's part is in[r*n, (r+1)*n)), `out` is [n]
  // and receives the sum over ranks of their part r (both contiguous, same dtype, on the group's device).
  PendingOp reduce_scatter_sum_async(at::Tensor& out, at::Tensor& in, std::string what);
  // Starts an all-gather: `in` is [n], `out` [world * n] receives rank r's `in` at [r*n, (r+1)*n).
  PendingOp all_gather_async(at::Tensor& out, at::Tensor& in, std::string what);
  // t <- sum over ranks (in place; t on any device, moved through the group's device).
  void all_reduce_sum_(at::Tensor& t, const std::string& what = "all-reduce");
  // Every rank passes its values; throws a UserError listing the values that differ between ranks.
  void check_same(const std::vector<int64_t>& values, const std::vector<std::string>& names);

  // The collectives this process has issued since the group was made (none without a group). Two
  // relaxed atomic adds per call: the gradient hooks may start collectives from autograd's threads.
  CollectiveBytes collectives() const;

  // After a failed collective: the group is left to the operating system instead of being torn down,
  // whose destructor could wait on collectives of a dead peer. Its worker threads then outlive this
  // object, so a process whose group failed must end with std::_Exit (bitqat's main does), not a
  // normal exit that runs static destructors under those threads. Called by PendingOp::wait on
  // failure. Errors a rank finds itself (GradSync's unused parameter) drain their collectives and
  // leave the group healthy.
  void mark_failed() { failed_ = true; }
  bool failed() const { return failed_; }

 private:
  friend class PendingOp;
  void wait_work(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
  enum class Kind { kAllReduce, kReduceScatter, kAllGather, kBroadcast };
  // Starts a collective (`launch` issues it on the group) and counts it as `kind` of `bytes`; a failure
  // to start is a UserError naming `what` and marks the group failed.
  PendingOp start(Kind kind, int64_t bytes, std::string what,
                  const std::function<c10::intrusive_ptr<c10d::Work>()>& launch);

  DistEnv env_;
  std::string backend_ = "none";
  std::chrono::milliseconds timeout_;
  at::Device device_;
  c10::intrusive_ptr<c10d::Backend> pg_;
  bool failed_ = false;
  struct Counter {
    std::atomic<int64_t> calls{0}, bytes{0};
  };
  Counter counters_[4];  // by Kind
};

// Runs `fn` on rank 0 only (reading a source whose weights the other ranks then receive by
// broadcast), and tells every rank whether it succeeded: rank 0 rethrows its own error, the others
// throw a UserError saying that rank 0 failed at `what`. Without a process group it just runs `fn`.
void run_on_main(DistContext& dist, const std::function<void()>& fn, const std::string& what);

// An exact, order-independent fingerprint of tensors' bits (for "are the ranks' copies identical").
int64_t bit_fingerprint(const std::vector<at::Tensor>& tensors);

}  // namespace bitqat::training
