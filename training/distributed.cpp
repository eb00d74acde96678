#include "training/distributed.hpp"

#include <fmt/format.h>

#include <cstdlib>

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
  } else if (std::getenv("SLURM_PROCID") && std::getenv("SLURM_NTASKS")) {
    e.launcher = "slurm";
    env_int("SLURM_PROCID", &e.rank);
    env_int("SLURM_NTASKS", &e.world_size);
    env_int("SLURM_LOCALID", &e.local_rank);
    int per_node = 0;
    if (env_int("SLURM_NTASKS_PER_NODE", &per_node)) e.local_world_size = per_node;
    if (const char* nl = std::getenv("SLURM_JOB_NODELIST")) e.master_addr = first_slurm_host(nl);
    e.master_port = 29500;
    env_int("MASTER_PORT", &e.master_port);
  }
  if (e.world_size < 1 || e.rank >= e.world_size) {
    throw core::UserError(
        fmt::format("rank {} is not below the world size {} ({} launch)", e.rank, e.world_size, e.launcher));
  }
  return e;
}

DistContext::DistContext(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout)
    : env_(env) {
  (void)backend;
  (void)timeout;
  if (env_.world_size > 1) {
    throw core::UserError(
        fmt::format("{} launch with world size {}: multi-process data-parallel training is not "
                    "available in this build yet; run a single process",
                    env_.launcher, env_.world_size));
  }
}

void DistContext::barrier() {}

void DistContext::all_reduce_mean_(at::Tensor& t) { (void)t; }

}  // namespace bitqat::training
