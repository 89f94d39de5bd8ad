#include "launch/topology.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string job_id_from_environment() {
  if (!env("SHARDCAST_JOB_ID").empty()) return env("SHARDCAST_JOB_ID");
  if (!env("SLURM_JOB_ID").empty()) return "slurm" + env("SLURM_JOB_ID") + "." + env("SLURM_STEP_ID");
  if (!env("TORCHELASTIC_RUN_ID").empty()) return "torchrun" + env("TORCHELASTIC_RUN_ID");
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  auto now = std::chrono::system_clock::now().time_since_epoch();
  return fmt::format("{}-{}-{}", host, getpid(), std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

}  // namespace

std::string sanitize_job_id(const std::string& id) {
  std::string out;
  for (char c : id) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  return out.substr(0, 120);
}

std::string Topology::describe() const {
  return fmt::format("rank {}/{} (local {}/{}) on node {}/{}, job '{}', via {}", rank, world_size, local_rank,
                     local_size, node, node_count, job_id, launcher);
}

Group make_group(std::unique_ptr<Communicator> world, Timeout timeout) {
  Group g;
  Topology& t = g.topology;
  t.rank = world->rank();
  t.world_size = world->size();
  t.launcher = world->kind();

  // Rank 0's job id wins, so ranks that see different environments still agree.
  t.job_id = sanitize_job_id(world->all_gather(t.rank == 0 ? job_id_from_environment() : "", "job id", timeout)[0]);

  // SHARDCAST_RANKS_PER_NODE=k groups ranks into virtual nodes of k consecutive ranks: tests simulate several nodes on
  // one machine with it, and it fixes hosts whose launcher groups ranks oddly.
  std::string key = world->node_key(timeout);
  if (!env("SHARDCAST_RANKS_PER_NODE").empty()) {
    const int per_node = std::atoi(env("SHARDCAST_RANKS_PER_NODE").c_str());
    if (per_node <= 0)
      throw Error(ErrorCode::kInvalidArgument, "SHARDCAST_RANKS_PER_NODE must be a positive number of ranks");
    key = fmt::format("virtual-node-{}", t.rank / per_node);
  }
  auto keys = world->all_gather(key, "node grouping", timeout);
  std::map<std::string, int> node_of_key;  // in order of first appearance by rank
  std::vector<int> node_of_rank(t.world_size);
  for (int r = 0; r < t.world_size; ++r) {
    auto it = node_of_key.emplace(keys[r], static_cast<int>(node_of_key.size())).first;
    node_of_rank[r] = it->second;
  }
  t.node = node_of_rank[t.rank];
  t.node_count = static_cast<int>(node_of_key.size());
  g.node = world->split(t.node, t.rank, "split by node", timeout);
  t.local_rank = g.node->rank();
  t.local_size = g.node->size();
  auto leaders = world->split(t.local_rank == 0 ? 0 : 1, t.node, "split node leaders", timeout);
  if (t.local_rank == 0) g.leaders = std::move(leaders);
  g.world = std::move(world);
  return g;
}

}  // namespace shardcast
