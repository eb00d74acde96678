// The process group of a run: where this process sits (from torchrun or SLURM variables) and the
// collectives the trainer needs. A single process needs no process group: every collective is then
// the identity.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <string>

namespace bitqat::training {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;
  int master_port = 0;
  bool use_agent_store = false;
  std::string launcher = "none";  // none | torchrun | slurm
};

// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), else SLURM's (SLURM_PROCID, ...), else a
// single process. Bad values are UserErrors naming the variable.
DistEnv dist_env_from_environment();

// First host of a SLURM node list: "node[003-005,007],gpu1" -> "node003".
std::string first_slurm_host(const std::string& nodelist);

class DistContext {
 public:
  DistContext(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout);
  int rank() const { return env_.rank; }
  int world() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  void barrier();
  void all_reduce_mean_(at::Tensor& t);

 private:
  DistEnv env_;
};

}  // namespace bitqat::training
