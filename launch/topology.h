// Who am I in the job: world and node-local rank, node index, job id. One printable type.
#pragma once

#include <memory>
#include <string>

#include "launch/communicator.h"
#include "launch/launch_env.h"

namespace shardcast {

struct Topology {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  int node = 0;
  int node_count = 1;
  std::string job_id;        // equal on every rank of a job, different between concurrent jobs; safe in file names
  std::string launcher;      // what started the job: "openmpi", "slurm", "pmi", "torchrun", "none"
  std::string evidence;      // the environment variables that said so
  std::string communicator;  // what the ranks talk over: "mpi", "store", "self"

  bool is_node_leader() const { return local_rank == 0; }
  std::string describe() const;
};

// The world, this rank's node, and the node leaders (nullptr on ranks that are not a node leader).
struct Group {
  Topology topology;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> node;
  std::unique_ptr<Communicator> leaders;
};

// Groups ranks into nodes by Communicator::node_key (or SHARDCAST_RANKS_PER_NODE) and agrees on rank 0's job id: the
// launcher's (LaunchEnv::job_id), else one rank 0 makes.
Group make_group(std::unique_ptr<Communicator> world, const LaunchEnv& env, Timeout timeout);

// Keeps [A-Za-z0-9._-]; anything else becomes '_'.
std::string sanitize_job_id(const std::string& id);

}  // namespace shardcast
